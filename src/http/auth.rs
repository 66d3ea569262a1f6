//! Who may call the API: bearer tokens checked on every request except the open ones (probes,
//! the OpenAPI document and docs page, and webhooks, which carry their own signature), a
//! per-token rate limit, and the `Authorized<...>` extractor with which each operation declares
//! the scope it needs. Task limits are checked by handlers, which know the task.

use super::AppState;
use crate::domain::auth::hash_token;
use crate::domain::{Caller, Denied, Scope};
use crate::error::{Error, Result};
use crate::store;
use axum::extract::{ConnectInfo, FromRequestParts, Request, State};
use axum::http::{header, request::Parts, HeaderMap};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use governor::clock::{Clock, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
use std::hash::Hash;
use std::marker::PhantomData;
use std::net::{IpAddr, SocketAddr};
use std::num::NonZeroU32;
use uuid::Uuid;

/// How the API authenticates callers.
pub struct AuthSettings {
    /// False only when explicitly turned off for local use: every caller is then an admin.
    pub enabled: bool,
    /// Requests per token (and deliveries per trigger); `None` when unlimited.
    pub rate_limit: Option<RateLimit>,
    /// Requests without a valid token, per client address; `None` when unlimited.
    pub anonymous_rate_limit: Option<RateLimit<IpAddr>>,
    /// `/metrics` without a token (for scrapers that cannot send one).
    pub metrics_public: bool,
    /// Browser origins allowed to call the API (CORS); none by default.
    pub cors_origins: Vec<axum::http::HeaderValue>,
}

/// A token-bucket rate limit per key (a token's or a trigger's id, a client's address).
pub struct RateLimit<K: Hash + Eq + Clone = Uuid> {
    limiter: DefaultKeyedRateLimiter<K>,
}

impl<K: Hash + Eq + Clone> RateLimit<K> {
    /// `per_second` requests on average, bursts of up to `burst`; `None` when `per_second` is 0.
    pub fn new(per_second: u32, burst: u32) -> Option<RateLimit<K>> {
        let rate = NonZeroU32::new(per_second)?;
        let burst = NonZeroU32::new(burst).unwrap_or(rate);
        Some(RateLimit {
            limiter: RateLimiter::keyed(Quota::per_second(rate).allow_burst(burst)),
        })
    }

    pub fn check(&self, key: K) -> Result<()> {
        self.limiter.check_key(&key).map_err(|not_until| {
            let retry_after = not_until.wait_time_from(DefaultClock::default().now());
            Error::RateLimited { retry_after }
        })?;
        // Keys of revoked tokens would otherwise stay forever.
        if self.limiter.len() > 10_000 {
            self.limiter.retain_recent();
        }
        Ok(())
    }
}

/// Paths anyone may call. Webhooks are open here because they authenticate with their
/// provider's signature instead. The dashboard's shell and files are open so that a browser
/// can reach its token field; they hold no data, and every API call it makes sends the token.
fn is_open(path: &str) -> bool {
    matches!(
        path,
        "/" | "/healthz" | "/readyz" | "/openapi.json" | "/docs"
    ) || path.starts_with("/docs/")
        || path.starts_with("/dashboard/")
        || path.starts_with("/v1/hooks/")
}

fn bearer(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| token.trim())
        .filter(|t| !t.is_empty())
}

/// Authenticates the caller (default deny: every path not open needs a valid token), applies
/// its rate limit, and hands the [`Caller`] to the handler.
pub async fn authenticate(
    State(state): State<AppState>,
    mut request: Request,
    next: Next,
) -> Response {
    let path = request.uri().path();
    let client = request
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|info| info.0.ip());
    // Unauthenticated traffic is limited per client address: open paths (but the probes, which
    // the kubelet must always reach, and webhooks, whose senders share addresses and which
    // are limited per trigger once their signature checks out), requests without a token, and
    // requests whose token is not valid (so guessing tokens is slow too).
    let anonymous_limit = |client: Option<IpAddr>| -> Result<()> {
        match (&state.auth.anonymous_rate_limit, client) {
            (Some(limit), Some(ip)) => limit.check(ip),
            _ => Ok(()),
        }
    };
    if is_open(path) || (path == "/metrics" && state.auth.metrics_public) {
        if !matches!(path, "/healthz" | "/readyz") && !path.starts_with("/v1/hooks/") {
            if let Err(error) = anonymous_limit(client) {
                return error.into_response();
            }
        }
        return next.run(request).await;
    }
    if state.auth.enabled && bearer(request.headers()).is_none() {
        if let Err(error) = anonymous_limit(client) {
            return error.into_response();
        }
    }
    match caller(&state, request.headers()).await {
        Ok(caller) => {
            request.extensions_mut().insert(caller);
            next.run(request).await
        }
        Err(error @ Error::Unauthenticated(_)) if bearer(request.headers()).is_some() => {
            anonymous_limit(client)
                .err()
                .unwrap_or(error)
                .into_response()
        }
        Err(error) => error.into_response(),
    }
}

async fn caller(state: &AppState, headers: &HeaderMap) -> Result<Caller> {
    if !state.auth.enabled {
        return Ok(Caller::unauthenticated());
    }
    let token = bearer(headers).ok_or(Error::Unauthenticated(
        "send an API token as `Authorization: Bearer <token>`",
    ))?;
    let caller = store::tokens::authenticate(&state.db, &hash_token(token))
        .await?
        .ok_or_else(|| {
            tracing::info!("request with an unknown or revoked token");
            Error::Unauthenticated("the bearer token is not valid (unknown or revoked)")
        })?;
    if let (Some(limit), Some(id)) = (&state.auth.rate_limit, caller.token_id) {
        limit.check(id)?;
    }
    Ok(caller)
}

/// The scope an operation needs, as a type: `Authorized<ForRun>`.
pub trait Needs: Send + Sync {
    const SCOPE: Scope;
}
pub struct ForRead;
pub struct ForRun;
pub struct ForAdmin;
impl Needs for ForRead {
    const SCOPE: Scope = Scope::Read;
}
impl Needs for ForRun {
    const SCOPE: Scope = Scope::Run;
}
impl Needs for ForAdmin {
    const SCOPE: Scope = Scope::Admin;
}

/// A caller whose token has at least scope `N`. Extracted before the body, so a token without
/// the scope is refused before its request is even read.
pub struct Authorized<N: Needs> {
    pub caller: Caller,
    needs: PhantomData<N>,
}

impl<N: Needs> Authorized<N> {
    /// Allows the operation on `task` (`None`: an ad-hoc run).
    pub fn task(&self, task: Option<&str>) -> Result<()> {
        Ok(self.caller.require_task(N::SCOPE, task)?)
    }

    /// Allows an operation that spans every task.
    pub fn all_tasks(&self) -> Result<()> {
        Ok(self.caller.require(N::SCOPE)?)
    }
}

impl<S: Send + Sync, N: Needs> FromRequestParts<S> for Authorized<N> {
    type Rejection = Error;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        let caller = parts
            .extensions
            .get::<Caller>()
            .cloned()
            .ok_or(Error::Unauthenticated("an API token is required"))?;
        if caller.scope < N::SCOPE {
            return Err(Error::Forbidden(Denied(format!(
                "this operation needs the {} scope; the token has {}",
                N::SCOPE,
                caller.scope
            ))));
        }
        Ok(Authorized {
            caller,
            needs: PhantomData,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn wait_of(result: Result<()>) -> Option<Duration> {
        match result {
            Err(Error::RateLimited { retry_after }) => Some(retry_after),
            _ => None,
        }
    }

    #[test]
    fn each_key_has_its_own_bucket() {
        let limit = RateLimit::new(1, 3).unwrap();
        let (a, b) = (Uuid::new_v4(), Uuid::new_v4());
        for _ in 0..3 {
            assert!(limit.check(a).is_ok());
        }
        let wait = wait_of(limit.check(a)).expect("the fourth request in a burst of 3 is refused");
        assert!(wait <= Duration::from_secs(1), "{wait:?}");
        assert!(limit.check(b).is_ok(), "another key is still served");
        assert!(
            RateLimit::<Uuid>::new(0, 10).is_none(),
            "0 turns the limit off"
        );
    }

    #[test]
    fn bearer_tokens_are_read_from_the_authorization_header() {
        let mut headers = HeaderMap::new();
        assert_eq!(bearer(&headers), None);
        headers.insert(header::AUTHORIZATION, "Bearer vfi_abc".parse().unwrap());
        assert_eq!(bearer(&headers), Some("vfi_abc"));
        headers.insert(header::AUTHORIZATION, "bearer  vfi_abc ".parse().unwrap());
        assert_eq!(bearer(&headers), Some("vfi_abc"));
        headers.insert(header::AUTHORIZATION, "Basic dXNlcjpwYXNz".parse().unwrap());
        assert_eq!(bearer(&headers), None);
        headers.insert(header::AUTHORIZATION, "Bearer ".parse().unwrap());
        assert_eq!(bearer(&headers), None);
    }

    #[test]
    fn only_probes_docs_the_dashboard_shell_and_webhooks_are_open() {
        for open in [
            "/",
            "/dashboard/app.js",
            "/healthz",
            "/readyz",
            "/openapi.json",
            "/docs",
            "/v1/hooks/x",
        ] {
            assert!(is_open(open), "{open}");
        }
        for closed in [
            "/v1/tasks",
            "/v1/runs",
            "/v1/tokens",
            "/v1/hooks",
            "/metrics",
            "/dashboardx",
            "/docsx",
        ] {
            assert!(!is_open(closed), "{closed}");
        }
    }
}
