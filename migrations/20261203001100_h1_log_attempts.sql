-- The container instances (attempts) of an archived pod log: a container restarted in place
-- (restartPolicy OnFailure) writes a new log file per instance, and the archiver appends each
-- after a marker line. Attempt N is the instance with restart count N - 1; its lines start at
-- `first_line` of the pod's archive and run up to the next attempt's marker line.
CREATE TABLE pod_log_attempts (
    run_id      uuid    NOT NULL,
    pod_name    text    NOT NULL,
    attempt     integer NOT NULL CHECK (attempt >= 1),
    first_line  bigint  NOT NULL CHECK (first_line >= 0),
    -- How the instance ended, once it did.
    exit_code   integer,
    PRIMARY KEY (run_id, pod_name, attempt),
    FOREIGN KEY (run_id, pod_name) REFERENCES pod_logs (run_id, pod_name) ON DELETE CASCADE
);
