//! One-line logs on stderr, filtered by `KLAV_LOG`.
//!
//! A chat server logs rarely (start, outages, kicks); a logging framework would be
//! most of its dependency tree, so this is a level and a macro.

use std::sync::atomic::{AtomicU8, Ordering};

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
#[repr(u8)]
pub enum Level {
    Error = 0,
    Warn = 1,
    Info = 2,
    Debug = 3,
}

static LEVEL: AtomicU8 = AtomicU8::new(Level::Info as u8);

pub fn set_level(level: Level) {
    LEVEL.store(level as u8, Ordering::Relaxed);
}

pub fn enabled(level: Level) -> bool {
    level as u8 <= LEVEL.load(Ordering::Relaxed)
}

/// `log!(Info, "accepted {}", n)`: timestamped, levelled, one line.
#[macro_export]
macro_rules! log {
    ($lvl:ident, $($arg:tt)*) => {
        if $crate::log::enabled($crate::log::Level::$lvl) {
            eprintln!("{} {:5} {}", $crate::time::now_iso(),
                stringify!($lvl).to_ascii_uppercase(), format_args!($($arg)*));
        }
    };
}
