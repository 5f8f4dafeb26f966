//! `klav webhooks failed` and `klav webhooks retry [ID|--all]`: the
//! dead-lettered events, listed and made due again, on the database the
//! server uses (a running server delivers them within a second or so).

use std::io::Write;

use postgres::{Client, NoTls};

use super::store;

pub const USAGE: &str = "\
usage: klav webhooks failed              list dead-lettered events
       klav webhooks retry <ID>          deliver one again (ID: evt_123 or 123)
       klav webhooks retry --all         deliver every dead-lettered event again

An event whose delivery still fails 24 hours after it was written is
dead-lettered: kept, counted in /metrics, never tried again until retried here.
A retried event is tried at once (by any running node), in its room's order
among the events not yet delivered, and given up again 24 hours later.
The database is the server's (DATABASE_URL, or the embedded PostgreSQL under
KLAV_DATA_DIR; stop the server first in that case). Exit codes: 0 done, 1 the
database failed or no such event, 2 usage error.";

/// What the command was asked to do.
#[derive(Debug, PartialEq, Eq)]
pub enum Command {
    Failed,
    Retry(Option<i64>),
    Help,
}

/// Parses the arguments after `webhooks`.
pub fn parse(args: &[String]) -> Result<Command, String> {
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    match args.as_slice() {
        ["failed"] => Ok(Command::Failed),
        ["retry", "--all"] => Ok(Command::Retry(None)),
        ["retry", id] => {
            let digits = id.strip_prefix("evt_").unwrap_or(id);
            digits
                .parse::<i64>()
                .ok()
                .filter(|n| *n > 0)
                .map(|n| Command::Retry(Some(n)))
                .ok_or_else(|| format!("{id:?} is not an event id (evt_123 or 123)"))
        }
        ["-h" | "--help"] | [] => Ok(Command::Help),
        _ => Err(format!("unexpected arguments {args:?}")),
    }
}

/// Runs `command` against the database at `url`; output goes to `out`.
/// Returns the exit code.
pub fn run(url: &str, command: &Command, out: &mut dyn Write) -> u8 {
    let mut c = match connect(url) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("klav webhooks: cannot connect to the database: {e}");
            return 1;
        }
    };
    let result = match command {
        Command::Help => {
            let _ = writeln!(out, "{USAGE}");
            return 0;
        }
        Command::Failed => failed(&mut c, out),
        Command::Retry(id) => retry(&mut c, *id, out),
    };
    result.unwrap_or_else(|e| {
        eprintln!("klav webhooks: {e}");
        1
    })
}

fn connect(url: &str) -> Result<Client, crate::db::DbError> {
    let pg = crate::db::pg_config(url, "klav webhooks")?;
    Ok(pg.connect(NoTls)?)
}

fn failed(c: &mut Client, out: &mut dyn Write) -> Result<u8, crate::db::DbError> {
    let dead = store::list_dead(c)?;
    let _ = writeln!(out, "{} dead-lettered events", dead.len());
    for d in dead {
        let status = d
            .last_status
            .map_or_else(|| "-".to_string(), |s| s.to_string());
        let _ = writeln!(
            out,
            "evt_{}\t{}\t{}\tattempts {}\tlast status {}\t{}",
            d.id,
            d.kind,
            crate::time::format_iso(d.created_at),
            d.attempts,
            status,
            d.last_error.unwrap_or_default().replace(['\n', '\t'], " ")
        );
    }
    Ok(0)
}

fn retry(c: &mut Client, id: Option<i64>, out: &mut dyn Write) -> Result<u8, crate::db::DbError> {
    let n = store::retry(c, id)?;
    match (id, n) {
        (Some(id), 0) => {
            eprintln!("klav webhooks: evt_{id} is not a dead-lettered event");
            Ok(1)
        }
        _ => {
            let _ = writeln!(out, "{n} events due again");
            Ok(0)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(args: &[&str]) -> Result<Command, String> {
        parse(&args.iter().map(|s| s.to_string()).collect::<Vec<_>>())
    }

    #[test]
    fn arguments() {
        assert_eq!(p(&["failed"]), Ok(Command::Failed));
        assert_eq!(p(&["retry", "--all"]), Ok(Command::Retry(None)));
        assert_eq!(p(&["retry", "evt_42"]), Ok(Command::Retry(Some(42))));
        assert_eq!(p(&["retry", "42"]), Ok(Command::Retry(Some(42))));
        assert!(p(&["retry", "evt_x"]).is_err());
        assert!(p(&["retry"]).is_err());
        assert!(p(&["failed", "now"]).is_err());
        assert_eq!(p(&[]), Ok(Command::Help));
    }
}
