//! Where `vfi` finds the service and its token: flags and `VFI_URL`/`VFI_TOKEN` first, then a
//! context of the config file (`VFI_CONFIG`, default `~/.config/vfi/config.yaml`), like a
//! kubeconfig:
//!
//! ```yaml
//! current-context: prod
//! contexts:
//!   - name: prod
//!     url: https://vfi.example.com
//!     token: vfi_...
//!   - name: dev
//!     url: http://127.0.0.1:8080
//! ```

use crate::args::Global;
use anyhow::{anyhow, bail, Context as _};
use serde::Deserialize;
use std::path::PathBuf;

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "kebab-case")]
struct ConfigFile {
    current_context: Option<String>,
    #[serde(default)]
    contexts: Vec<Context>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Context {
    name: String,
    url: Option<String>,
    token: Option<String>,
}

/// The service to talk to.
#[derive(Debug)]
pub struct Target {
    pub url: url::Url,
    pub token: Option<String>,
}

fn default_path() -> Option<PathBuf> {
    use etcetera::BaseStrategy;
    etcetera::choose_base_strategy()
        .ok()
        .map(|dirs| dirs.config_dir().join("vfi").join("config.yaml"))
}

pub fn resolve(global: &Global) -> anyhow::Result<Target> {
    let (path, explicit) = match &global.config {
        Some(path) => (Some(path.clone()), true),
        None => (default_path(), false),
    };
    let file = match &path {
        Some(path) if explicit || path.exists() => {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("reading the config file {}", path.display()))?;
            serde_norway::from_str::<ConfigFile>(&text)
                .with_context(|| format!("parsing the config file {}", path.display()))?
        }
        _ => ConfigFile::default(),
    };
    let wanted = global.context.clone().or(file.current_context.clone());
    let context =
        match &wanted {
            Some(name) => Some(file.contexts.iter().find(|c| &c.name == name).ok_or_else(
                || {
                    anyhow!(
                        "no context {name:?} in {}",
                        path.as_ref()
                            .map(|p| p.display().to_string())
                            .unwrap_or_else(|| "the config file".into())
                    )
                },
            )?),
            None => None,
        };
    let url = global
        .url
        .clone()
        .or_else(|| context.and_then(|c| c.url.clone()));
    let Some(url) = url else {
        bail!("no service URL: set VFI_URL, pass --url, or add a context to ~/.config/vfi/config.yaml (or VFI_CONFIG)")
    };
    let mut url = url::Url::parse(&url).with_context(|| format!("VFI_URL {url:?} is not a URL"))?;
    if !matches!(url.scheme(), "http" | "https") {
        bail!("VFI_URL {url} is not an http(s) URL");
    }
    // Paths are joined onto it: a base without a trailing slash would lose its last segment.
    if !url.path().ends_with('/') {
        url.set_path(&format!("{}/", url.path()));
    }
    let token = global
        .token
        .clone()
        .or_else(|| context.and_then(|c| c.token.clone()))
        .filter(|t| !t.is_empty());
    Ok(Target { url, token })
}
