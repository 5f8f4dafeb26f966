//! The command line: `klav-bench <scenario> [flags]` into [`Options`].

use std::time::Duration;

use crate::error::BenchError;
use crate::options::{
    AbuseOptions, Attack, ChatOptions, ConnectOptions, DmOptions, HistoryOptions, JwtAlg,
    LoginOptions, Options, PresenceOptions, Scenario,
};

pub const USAGE: &str = "\
klav-bench: load generator for the Klav chat server

USAGE:
    klav-bench <chat|fanout|dm|connect|history|login|presence|abuse> [FLAGS]

COMMON FLAGS:
    --addr HOST:PORT[,HOST:PORT...]
                              server address (default 127.0.0.1:5000), or several
                              cluster nodes: WebSockets are spread over them, HTTP
                              setup goes to the first (abuse: one address only)
    --dest-addrs N            spread each node's WebSockets over N loopback addresses
                              from its address (default 1; connect, abuse: one per
                              10,000 connections)
    --threads N               client event-loop threads (default: cores)
    --duration SECS           measured time (default 10)
    --warmup SECS             unmeasured time before it (default 0)
    --drain SECS              wait for outstanding deliveries after sending stops (default 5)
    --timeout SECS            handshake / echo / reply timeout (default 10)
    --setup-timeout SECS      longest setup before starting with what is ready (default 300)
    --concurrency N           WebSocket handshakes in flight (default 256)
    --user-prefix P           users are P_0, P_1, ... (default: unique per run)
    --password PW             password of bench users (default klav-bench-pw)
    --jwt-secret S            mint tokens with the server's JWT_SECRET instead of logging in
    --jwt-alg HS256|HS384|HS512   algorithm of minted tokens (default HS256)
    --no-register             users already exist (reused --user-prefix): skip /register
    --register-concurrency N  registrations/logins in flight during setup (default 32)
    --backoff-ms MS           pause after RATE_LIMITED (default 100)
    --server-pid PID          report the peak VmRSS of this process (abuse: also its CPU time)
    --json                    print the report as one JSON object on the last line
    --quiet                   no progress lines on stderr
    --check                   exit with status 3 when the report shows any problem
                              (dm: always)

CHAT / FANOUT:
    --rooms R                 rooms (default 10; fanout: 1)
    --members M               member connections per room (default 10; fanout: 1000)
    --senders S               senders per room (default 2)
    --window N                closed loop: messages in flight per sender (default 1)
    --rate MSGS_PER_SEC       open loop at this aggregate rate instead of closed loop
    --msg-size BYTES          pad message texts to this size (max 4000)
    --with-login-clients N    run N login clients in the background meanwhile
    --client-ids              give every message a unique client_id (idempotent send)
    --typing-every-ms MS      every member sends `typing` to its room every MS ms

DM:
    --rooms R                 rooms (default 10)
    --members M               members per room, one user each (default 4)
    --offline N               of each room's members, the last N stay offline
                              (joined, never connected): DMs to them are QUEUED
                              (default 0)
    --window N                closed loop: DMs in flight per sender (default 1)
    --rate DMS_PER_SEC        open loop at this aggregate rate instead of closed loop
    --msg-size BYTES          pad DM texts to this size (max 4000)
    --client-ids              give every DM a unique client_id (idempotent send)
    Every connected member sends to the others of its room in turn. The run fails
    (status 3) on any missing, duplicated, out-of-order or misdirected DM, any
    dm_ack that is not DELIVERED (QUEUED for offline members), or any other problem.

CONNECT:
    --connections C           connections to open (default 1000)
    --users U                 users they are spread over (default C/100)
    --hold SECS               hold time once all attempts settled (default 10)

HISTORY:
    --clients K               clients in the room (default 10)
    --limit L                 history limit (default 50)
    --preload N               messages sent into the room first (default 200)
    --window N                requests in flight per client (default 1)

LOGIN:
    --clients K               keep-alive connections logging in (default 8)
    --users U                 distinct users (default K)

PRESENCE:
    --targets P               followed users going online/offline (default 10)
    --followers F             followers, each following every target (default 20)
    --online-ms MS            time a target stays online per cycle (default 500)
    --offline-ms MS           time a target stays offline per cycle (default 500)

ABUSE:
    --attacks a,b,...         metrics-pipeline, history-pipeline, idle-buffers,
                              unread-responses, fragments, many-sockets, wide-json,
                              room-spam, resume-replay, my-rooms, history-fill, pings,
                              churn (default: all)
    --filled-rooms N          rooms filled for resume-replay, my-rooms, history-fill
                              (default 50)
    --filled-entries N        entries of 4,000 control characters in each (default 40)
    --abusers N               connections per attack (default 1000)
    --normal-rate R           the normal client's msgs per second (default 20)
    --wide-rate R             wide-json frames per second per connection (default 50)
    --settle SECS             after the abusers leave, wait before reading RSS (default 3)
    --attack-nice N           nice value (0..19) of the attack threads (default 0); on one
                              machine, 19 gives the server's cores to the server first,
                              as when the attacker is another machine
    --normal-from IP          the normal client's local address (default on loopback:
                              127.0.0.254, apart from the abusers' 127.0.0.1)
";

/// A parsed command line.
#[derive(Debug)]
pub struct Command {
    pub options: Options,
    pub json: bool,
    pub check: bool,
}

/// Parses the arguments after the program name. `Ok(None)`: help was asked for.
pub fn parse(args: &[String]) -> Result<Option<Command>, BenchError> {
    let mut it = args.iter();
    let Some(scenario) = it.next() else {
        return Ok(None);
    };
    if scenario == "-h" || scenario == "--help" || scenario == "help" {
        return Ok(None);
    }
    let mut opts = Options {
        progress: true,
        ..Options::default()
    };
    let mut chat = if scenario == "fanout" {
        ChatOptions::fanout()
    } else {
        ChatOptions::default()
    };
    let mut connect = ConnectOptions::default();
    let mut history = HistoryOptions::default();
    let mut login = LoginOptions::default();
    let mut presence = PresenceOptions::default();
    let mut abuse = AbuseOptions::default();
    let mut offline = 0;
    let mut members_set = None;
    let mut json = false;
    let mut check = false;
    let mut window_set = None;
    let mut clients_set = None;
    let mut users_set = None;

    let rest: Vec<String> = it.cloned().collect();
    let mut i = 0;
    while i < rest.len() {
        let arg = &rest[i];
        i += 1;
        let (flag, inline) = match arg.split_once('=') {
            Some((f, v)) if f.starts_with("--") => (f.to_string(), Some(v.to_string())),
            _ => (arg.clone(), None),
        };
        let mut value = || -> Result<String, BenchError> {
            if let Some(v) = inline.clone() {
                return Ok(v);
            }
            let v = rest
                .get(i)
                .cloned()
                .ok_or_else(|| BenchError::Usage(format!("{flag} needs a value")))?;
            i += 1;
            Ok(v)
        };
        match flag.as_str() {
            "-h" | "--help" => return Ok(None),
            "--json" => json = true,
            "--quiet" => opts.progress = false,
            "--check" => check = true,
            "--no-register" => opts.skip_register = true,
            "--addr" => {
                opts.addr = crate::nodes::parse_addr_list(&value()?)
                    .map_err(BenchError::Usage)?
                    .join(",")
            }
            "--dest-addrs" => opts.dest_addrs = Some(num(&flag, &value()?)?),
            "--threads" => opts.threads = num(&flag, &value()?)?,
            "--duration" => opts.duration = secs(&flag, &value()?)?,
            "--warmup" => opts.warmup = secs(&flag, &value()?)?,
            "--drain" => opts.drain = secs(&flag, &value()?)?,
            "--timeout" => opts.timeout = secs(&flag, &value()?)?,
            "--setup-timeout" => opts.setup_timeout = secs(&flag, &value()?)?,
            "--concurrency" => opts.connect_concurrency = num(&flag, &value()?)?,
            "--user-prefix" => opts.user_prefix = Some(value()?),
            "--password" => opts.password = value()?,
            "--jwt-secret" => opts.jwt_secret = Some(value()?),
            "--jwt-alg" => {
                let v = value()?;
                opts.jwt_alg = JwtAlg::parse(&v).ok_or_else(|| {
                    BenchError::Usage(format!("--jwt-alg {v:?}: expected HS256, HS384 or HS512"))
                })?;
            }
            "--register-concurrency" => opts.register_concurrency = num(&flag, &value()?)?,
            "--backoff-ms" => opts.backoff = Duration::from_millis(num(&flag, &value()?)? as u64),
            "--server-pid" => opts.server_pid = Some(num(&flag, &value()?)? as u32),
            "--rooms" => chat.rooms = num(&flag, &value()?)?,
            "--members" => members_set = Some(num(&flag, &value()?)?),
            "--offline" => offline = num(&flag, &value()?)?,
            "--senders" => chat.senders = num(&flag, &value()?)?,
            "--window" => window_set = Some(num(&flag, &value()?)?),
            "--rate" => {
                let v = value()?;
                chat.rate = Some(
                    v.parse::<f64>()
                        .ok()
                        .filter(|r| *r > 0.0 && r.is_finite())
                        .ok_or_else(|| {
                            BenchError::Usage(format!("--rate {v:?}: expected a positive number"))
                        })?,
                );
            }
            "--msg-size" => chat.msg_size = num(&flag, &value()?)?,
            "--with-login-clients" => chat.with_login_clients = num(&flag, &value()?)?,
            "--client-ids" => chat.client_ids = true,
            "--typing-every-ms" => {
                let ms: usize = num(&flag, &value()?)?;
                if ms == 0 {
                    return Err(BenchError::Usage(
                        "--typing-every-ms must be at least 1".into(),
                    ));
                }
                chat.typing_every = Some(Duration::from_millis(ms as u64));
            }
            "--connections" => connect.connections = num(&flag, &value()?)?,
            "--users" => users_set = Some(num(&flag, &value()?)?),
            "--hold" => connect.hold = secs(&flag, &value()?)?,
            "--clients" => clients_set = Some(num(&flag, &value()?)?),
            "--limit" => history.limit = num(&flag, &value()?)?,
            "--preload" => history.preload = num(&flag, &value()?)?,
            "--targets" => presence.targets = num(&flag, &value()?)?,
            "--followers" => presence.followers = num(&flag, &value()?)?,
            "--online-ms" => presence.online = Duration::from_millis(num(&flag, &value()?)? as u64),
            "--offline-ms" => {
                presence.offline = Duration::from_millis(num(&flag, &value()?)? as u64)
            }
            "--attacks" => abuse.attacks = attacks(&value()?)?,
            "--abusers" => abuse.abusers = num(&flag, &value()?)?,
            "--normal-rate" => abuse.normal_rate = positive(&flag, &value()?)?,
            "--attack-nice" => {
                let v = value()?;
                abuse.attack_nice = match v.parse::<i32>() {
                    Ok(n) if (0..=19).contains(&n) => n,
                    _ => {
                        return Err(BenchError::Usage(format!(
                            "--attack-nice {v:?}: expected 0..19"
                        )))
                    }
                };
            }
            "--wide-rate" => abuse.wide_rate = positive(&flag, &value()?)?,
            "--filled-rooms" => abuse.filled_rooms = num(&flag, &value()?)?,
            "--filled-entries" => abuse.filled_entries = num(&flag, &value()?)?,
            "--settle" => abuse.settle = secs(&flag, &value()?)?,
            "--normal-from" => {
                let v = value()?;
                abuse.normal_from = Some(v.parse().map_err(|_| {
                    BenchError::Usage(format!("--normal-from {v:?}: expected an IP address"))
                })?);
            }
            other => {
                return Err(BenchError::Usage(format!(
                    "unknown flag {other:?} (see --help)"
                )))
            }
        }
    }
    if let Some(w) = window_set {
        chat.window = w;
        history.window = w;
    }
    if let Some(m) = members_set {
        chat.members = m;
    }
    if let Some(c) = clients_set {
        history.clients = c;
        login.clients = c;
    }
    if let Some(u) = users_set {
        connect.users = Some(u);
        login.users = Some(u);
    }
    opts.scenario = match scenario.as_str() {
        "chat" => Scenario::Chat(chat),
        "fanout" => {
            chat.rooms = 1;
            Scenario::Fanout(chat)
        }
        "dm" => Scenario::Dm(DmOptions {
            rooms: chat.rooms,
            members: members_set.unwrap_or(DmOptions::default().members),
            offline,
            window: chat.window,
            rate: chat.rate,
            msg_size: chat.msg_size,
            client_ids: chat.client_ids,
        }),
        "connect" => Scenario::Connect(connect),
        "history" => Scenario::History(history),
        "login" => Scenario::Login(login),
        "presence" => Scenario::Presence(presence),
        "abuse" => Scenario::Abuse(abuse),
        other => {
            return Err(BenchError::Usage(format!(
                "unknown scenario {other:?}: expected chat, fanout, dm, connect, history, login, presence or abuse"
            )))
        }
    };
    Ok(Some(Command {
        options: opts,
        json,
        check,
    }))
}

fn num(flag: &str, v: &str) -> Result<usize, BenchError> {
    v.replace('_', "")
        .parse()
        .map_err(|_| BenchError::Usage(format!("{flag} {v:?}: expected a whole number")))
}

fn positive(flag: &str, v: &str) -> Result<f64, BenchError> {
    v.parse::<f64>()
        .ok()
        .filter(|r| *r > 0.0 && r.is_finite())
        .ok_or_else(|| BenchError::Usage(format!("{flag} {v:?}: expected a positive number")))
}

/// `--attacks a,b,c`: known names, each once, in the order given.
fn attacks(v: &str) -> Result<Vec<Attack>, BenchError> {
    let mut out = Vec::new();
    for name in v.split(',').map(str::trim).filter(|n| !n.is_empty()) {
        if name == "all" {
            return Ok(Attack::ALL.to_vec());
        }
        let a = Attack::parse(name).ok_or_else(|| {
            BenchError::Usage(format!(
                "--attacks: unknown attack {name:?}; expected some of {}",
                Attack::ALL.map(Attack::name).join(", ")
            ))
        })?;
        if !out.contains(&a) {
            out.push(a);
        }
    }
    if out.is_empty() {
        return Err(BenchError::Usage(
            "--attacks needs at least one attack".into(),
        ));
    }
    Ok(out)
}

fn secs(flag: &str, v: &str) -> Result<Duration, BenchError> {
    v.parse::<f64>()
        .ok()
        .filter(|s| *s >= 0.0 && s.is_finite())
        .map(Duration::from_secs_f64)
        .ok_or_else(|| BenchError::Usage(format!("{flag} {v:?}: expected seconds")))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(s: &str) -> Vec<String> {
        s.split_whitespace().map(str::to_string).collect()
    }

    #[test]
    fn chat_flags() {
        let c = parse(&args(
            "chat --addr 127.0.0.1:5055 --rooms 5 --members=7 --senders 3 --rate 250.5 --duration 2.5 --json --quiet --window 4",
        ))
        .unwrap()
        .unwrap();
        assert!(c.json);
        assert!(!c.options.progress);
        assert_eq!(c.options.addr, "127.0.0.1:5055");
        assert_eq!(c.options.duration, Duration::from_millis(2500));
        let Scenario::Chat(chat) = c.options.scenario else {
            panic!("not chat");
        };
        assert_eq!(
            (chat.rooms, chat.members, chat.senders, chat.window),
            (5, 7, 3, 4)
        );
        assert_eq!(chat.rate, Some(250.5));
    }

    #[test]
    fn addr_takes_one_address_or_a_list_of_nodes() {
        let c = parse(&args("chat --addr 127.0.0.1:5000")).unwrap().unwrap();
        assert_eq!(c.options.addr, "127.0.0.1:5000");
        let c = parse(&args(
            "chat --addr 127.0.0.1:5001,127.0.0.1:5002,127.0.0.1:5003 --dest-addrs 2",
        ))
        .unwrap()
        .unwrap();
        assert_eq!(
            c.options.addr,
            "127.0.0.1:5001,127.0.0.1:5002,127.0.0.1:5003"
        );
        assert_eq!(c.options.dest_addrs, Some(2));
        // `=` form, and blanks around entries (a quoted list) are dropped.
        let c = parse(&[
            "fanout".to_string(),
            "--addr=127.0.0.1:5001, 127.0.0.2:5001".to_string(),
        ])
        .unwrap()
        .unwrap();
        assert_eq!(c.options.addr, "127.0.0.1:5001,127.0.0.2:5001");
        for bad in [
            "chat --addr 127.0.0.1:5001,",
            "chat --addr ,127.0.0.1:5001",
            "chat --addr 127.0.0.1:5001,,127.0.0.1:5002",
        ] {
            assert!(
                matches!(parse(&args(bad)), Err(BenchError::Usage(_))),
                "{bad}"
            );
        }
    }

    #[test]
    fn dm_flags_and_defaults() {
        let c = parse(&args(
            "dm --rooms 20 --members 5 --offline 1 --rate 500 --msg-size 64 --client-ids --window 3",
        ))
        .unwrap()
        .unwrap();
        let Scenario::Dm(d) = c.options.scenario else {
            panic!("not dm");
        };
        assert_eq!(
            (d.rooms, d.members, d.offline, d.window, d.msg_size),
            (20, 5, 1, 3, 64)
        );
        assert_eq!(d.rate, Some(500.0));
        assert!(d.client_ids);
        let c = parse(&args("dm")).unwrap().unwrap();
        assert_eq!(c.options.scenario.name(), "dm");
        let Scenario::Dm(d) = c.options.scenario else {
            panic!("not dm");
        };
        assert_eq!((d.rooms, d.members, d.offline, d.window), (10, 4, 0, 1));
        assert_eq!(d.rate, None);
    }

    #[test]
    fn fanout_defaults_and_one_room() {
        let c = parse(&args("fanout --rooms 9")).unwrap().unwrap();
        let Scenario::Fanout(chat) = c.options.scenario else {
            panic!("not fanout");
        };
        assert_eq!(chat.rooms, 1);
        assert_eq!(chat.members, 1000);
    }

    #[test]
    fn shared_flags_go_to_the_chosen_scenario() {
        let c = parse(&args(
            "connect --connections 18_000 --users 180 --hold 30 --dest-addrs 4 --jwt-secret s",
        ))
        .unwrap()
        .unwrap();
        assert_eq!(c.options.dest_addrs, Some(4));
        assert_eq!(c.options.jwt_secret.as_deref(), Some("s"));
        let Scenario::Connect(co) = c.options.scenario else {
            panic!("not connect");
        };
        assert_eq!((co.connections, co.users), (18_000, Some(180)));
        let c = parse(&args("login --clients 16 --users 4"))
            .unwrap()
            .unwrap();
        let Scenario::Login(lo) = c.options.scenario else {
            panic!("not login");
        };
        assert_eq!((lo.clients, lo.users), (16, Some(4)));
        let c = parse(&args("history --clients 3 --window 2 --limit 10"))
            .unwrap()
            .unwrap();
        let Scenario::History(h) = c.options.scenario else {
            panic!("not history");
        };
        assert_eq!((h.clients, h.window, h.limit), (3, 2, 10));
    }

    #[test]
    fn abuse_flags() {
        let c = parse(&args(
            "abuse --attacks wide-json,room-spam,wide-json --abusers 500 --duration 30 --server-pid 42",
        ))
        .unwrap()
        .unwrap();
        assert_eq!(c.options.server_pid, Some(42));
        let Scenario::Abuse(a) = c.options.scenario else {
            panic!("not abuse");
        };
        assert_eq!(a.attacks, vec![Attack::WideJson, Attack::RoomSpam]);
        assert_eq!(a.abusers, 500);
        let c = parse(&args("abuse")).unwrap().unwrap();
        let Scenario::Abuse(a) = c.options.scenario else {
            panic!("not abuse");
        };
        assert_eq!(a.attacks.len(), Attack::ALL.len());
        assert_eq!(a.abusers, 1000);
        for bad in [
            "abuse --attacks nope",
            "abuse --attacks ,",
            "abuse --wide-rate 0",
        ] {
            assert!(
                matches!(parse(&args(bad)), Err(BenchError::Usage(_))),
                "{bad}"
            );
        }
    }

    #[test]
    fn bad_input_is_a_usage_error() {
        for bad in [
            "nosuch",
            "chat --rooms",
            "chat --rooms x",
            "chat --bogus 1",
            "chat --rate -1",
            "chat --jwt-alg RS256",
            "chat --duration -3",
        ] {
            assert!(
                matches!(parse(&args(bad)), Err(BenchError::Usage(_))),
                "{bad}"
            );
        }
        assert!(parse(&[]).unwrap().is_none());
        assert!(parse(&args("--help")).unwrap().is_none());
        assert!(parse(&args("chat -h")).unwrap().is_none());
    }
}
