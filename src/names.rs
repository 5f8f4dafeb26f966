//! The rules for names people see: usernames, nicknames and room names, and the
//! system texts built from them.
//!
//! Every name is shown to other people, in lists and in the Korean system lines
//! of a room's log, so a name must not be able to pass for someone else's or for
//! a line the server wrote:
//! - new usernames are plain ASCII (no Cyrillic `а` for `a`, no fullwidth forms),
//!   unique without regard to case, and not one of [`RESERVED_USERNAMES`];
//! - nicknames and room names are any script, in NFC (so `한` typed as three jamo
//!   is the same name as the syllable), with no control or bidirectional-control
//!   character (no forged line breaks, no text that reads backwards), and with at
//!   least one character that shows;
//! - names stored before these rules (legacy rows, imports) pass through
//!   [`printable`] before they are shown or put into a system text.

use std::borrow::Cow;
use std::fmt;

use unicode_normalization::UnicodeNormalization;
use unicode_properties::{GeneralCategory, GeneralCategoryGroup, UnicodeGeneralCategory};

/// Names nobody may register, compared without regard to case: they read as the
/// server itself or as its staff (`system` is also the sender of system entries).
pub const RESERVED_USERNAMES: &[&str] = &[
    "system",
    "admin",
    "administrator",
    "klav",
    "root",
    "moderator",
    "support",
    "anonymous",
    "null",
    "deleted",
];

/// Longest username (the `users.username` column).
pub const MAX_USERNAME: usize = 100;
/// Longest nickname, in characters after normalisation.
pub const MAX_NICKNAME: usize = 64;
/// Longest name of a new room, in characters after normalisation.
pub const MAX_ROOM_NAME: usize = 100;

/// Why a new username is refused. The texts start with `invalid username`,
/// which is what clients of the old server match on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum UsernameError {
    /// Empty, too long, or a character outside ASCII letters, digits, `_ . -`.
    Invalid,
    /// Only dots (`.`, `..` read as paths, and as nothing at all).
    OnlyDots,
    Reserved,
}

impl fmt::Display for UsernameError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            UsernameError::Invalid => "invalid username",
            UsernameError::OnlyDots => "invalid username: it cannot be made of dots only",
            UsernameError::Reserved => "invalid username: that name is reserved",
        })
    }
}

/// A username for a new account: 1 to 100 ASCII letters, digits, `_`, `.`,
/// `-`, not only dots, not reserved. (Whether it is taken, also in another
/// case, is for the database to say.)
pub fn check_new_username(u: &str) -> Result<(), UsernameError> {
    if u.is_empty()
        || u.len() > MAX_USERNAME
        || !u
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'))
    {
        return Err(UsernameError::Invalid);
    }
    if u.bytes().all(|b| b == b'.') {
        return Err(UsernameError::OnlyDots);
    }
    if RESERVED_USERNAMES.iter().any(|r| r.eq_ignore_ascii_case(u)) {
        return Err(UsernameError::Reserved);
    }
    Ok(())
}

/// Whether `u` could name an existing account: what the old server and earlier
/// versions of Klav registered — letters and digits of any script, `_`, `.`,
/// `-`, 1 to 100 characters. Login asks this before a name becomes a query or
/// a throttle key; such accounts (Korean names, names in any case) keep
/// logging in although new ones are plain ASCII.
pub fn could_be_username(u: &str) -> bool {
    !u.is_empty()
        && u.chars().count() <= MAX_USERNAME
        && u.chars()
            .all(|c| c.is_alphanumeric() || matches!(c, '_' | '.' | '-'))
}

/// Why a nickname or room name is refused (the text completes "nickname …").
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NameError {
    TooLong {
        max: usize,
    },
    /// A control character (line breaks, ESC, BEL, …) or a line/paragraph separator.
    Control,
    /// A bidirectional control: it makes text around it read in another order.
    Bidi,
    /// Nothing in it shows: only spaces, format characters or combining marks.
    Invisible,
}

impl fmt::Display for NameError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            NameError::TooLong { max } => write!(f, "is longer than {max} characters"),
            NameError::Control => {
                f.write_str("contains a control character (such as a line break)")
            }
            NameError::Bidi => f.write_str("contains a bidirectional control character"),
            NameError::Invisible => f.write_str("has no visible character"),
        }
    }
}

/// A nickname as stored: NFC, surrounding whitespace trimmed. `Ok(None)`: empty
/// (the account's username stands in for it).
pub fn nickname(input: &str) -> Result<Option<String>, NameError> {
    display_name(input, MAX_NICKNAME)
}

/// A new room's name as stored (as [`nickname`]; `Ok(None)`: empty).
pub fn room_name(input: &str) -> Result<Option<String>, NameError> {
    display_name(input, MAX_ROOM_NAME)
}

fn display_name(input: &str, max: usize) -> Result<Option<String>, NameError> {
    let name: String = input.trim().nfc().collect();
    // NFC never turns a non-space into a space, but trim again all the same:
    // what is stored is exactly what was checked.
    let name = name.trim();
    if name.is_empty() {
        return Ok(None);
    }
    if name.chars().count() > max {
        return Err(NameError::TooLong { max });
    }
    if name.chars().any(breaks_lines) {
        return Err(NameError::Control);
    }
    if name.chars().any(is_bidi_control) {
        return Err(NameError::Bidi);
    }
    if !name.chars().any(shows) {
        return Err(NameError::Invisible);
    }
    Ok(Some(name.to_string()))
}

/// C0/C1 controls (line feed, ESC, BEL, NEL, …) and U+2028/U+2029 (the only
/// line and paragraph separators): anything that can start a new line or drive
/// a terminal. Cheap: it runs over every nickname read from the database.
fn breaks_lines(c: char) -> bool {
    c.is_control() || matches!(c, '\u{2028}' | '\u{2029}')
}

/// The bidirectional formatting characters (ALM, LRM, RLM, the embeddings and
/// overrides, the isolates).
fn is_bidi_control(c: char) -> bool {
    matches!(
        c,
        '\u{061C}' | '\u{200E}' | '\u{200F}' | '\u{202A}'..='\u{202E}' | '\u{2066}'..='\u{2069}'
    )
}

/// Whether `c` puts something visible on the screen: not whitespace, not a
/// format character (U+200B–U+200D, U+2060, U+FEFF, …), not a combining mark,
/// and not one of the letters made to be blank (the Hangul fillers, the
/// blank Braille pattern), which a Korean chat would otherwise show as nobody.
fn shows(c: char) -> bool {
    !c.is_whitespace()
        && !matches!(
            c,
            '\u{115F}' | '\u{1160}' | '\u{3164}' | '\u{FFA0}' | '\u{2800}'
        )
        && c.general_category() != GeneralCategory::Format
        && c.general_category_group() != GeneralCategoryGroup::Mark
}

/// `s` with every control, line-separator and bidirectional-control character
/// replaced by U+FFFD: what a name stored before the rules above (or any text
/// from outside) may be shown or logged as without starting a line of its own.
pub fn printable(s: &str) -> Cow<'_, str> {
    let bad = |c: char| breaks_lines(c) || is_bidi_control(c);
    if !s.chars().any(bad) {
        return Cow::Borrowed(s);
    }
    Cow::Owned(
        s.chars()
            .map(|c| if bad(c) { '\u{FFFD}' } else { c })
            .collect(),
    )
}

/// The system entries a room's log gets, in the old server's exact Korean
/// words. The only way their texts are built: every name in them goes through
/// [`printable`] first, so no name (however old its row) can add a line.
#[derive(Clone, Copy, Debug)]
pub enum SystemText<'a> {
    /// `create_room` (or a `join` by a name no room had).
    Created {
        room: &'a str,
        creator: &'a str,
    },
    Joined {
        nickname: &'a str,
    },
    Left {
        nickname: &'a str,
    },
    /// `room_update`: the room's name, topic or privacy changed.
    Updated {
        nickname: &'a str,
    },
    /// `kick` (`banned` false) or `ban` of `nickname` by the moderator `by`.
    Removed {
        nickname: &'a str,
        by: &'a str,
        banned: bool,
    },
}

impl SystemText<'_> {
    pub fn render(&self) -> String {
        match *self {
            SystemText::Created { room, creator } => format!(
                "대화방 \"{}\"을 {} 님이 만들었습니다",
                printable(room),
                printable(creator)
            ),
            SystemText::Joined { nickname } => {
                format!("{} 님이 입장하셨습니다", printable(nickname))
            }
            SystemText::Left { nickname } => {
                format!("{} 님이 나가셨습니다", printable(nickname))
            }
            SystemText::Updated { nickname } => {
                format!("{} 님이 대화방 정보를 바꾸었습니다", printable(nickname))
            }
            SystemText::Removed {
                nickname,
                by,
                banned,
            } => format!(
                "{} 님이 {} 님에 의해 {}",
                printable(nickname),
                printable(by),
                if banned {
                    "차단되었습니다"
                } else {
                    "내보내졌습니다"
                }
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn new_usernames() {
        for ok in ["alice", "Bob", "u.n-d_1", "a.", ".a", &"x".repeat(100)] {
            assert_eq!(check_new_username(ok), Ok(()), "{ok:?}");
        }
        for bad in [
            "",
            "has space",
            "аlice", // Cyrillic а
            "ａｌｉｃｅ",
            "e\u{301}",
            "미나",
            &"x".repeat(101),
        ] {
            assert_eq!(
                check_new_username(bad),
                Err(UsernameError::Invalid),
                "{bad:?}"
            );
        }
        for dots in [".", "..", "..."] {
            assert_eq!(check_new_username(dots), Err(UsernameError::OnlyDots));
        }
        for r in ["system", "SYSTEM", "Admin", "nUlL", "deleted", "klav"] {
            assert_eq!(check_new_username(r), Err(UsernameError::Reserved), "{r}");
        }
        assert_eq!(check_new_username("systems"), Ok(()));
    }

    #[test]
    fn existing_usernames() {
        assert!(could_be_username("미나"));
        assert!(could_be_username("Mina.K"));
        assert!(!could_be_username("has space"));
        assert!(!could_be_username(""));
        assert!(!could_be_username("a\nb"));
        assert!(!could_be_username(&"가".repeat(101)));
        assert!(could_be_username(&"가".repeat(100)));
    }

    #[test]
    fn nicknames() {
        assert_eq!(nickname("  미나  "), Ok(Some("미나".into())));
        assert_eq!(nickname("   "), Ok(None));
        assert_eq!(nickname(""), Ok(None));
        // Three jamo compose into one syllable.
        assert_eq!(
            nickname("\u{1112}\u{1161}\u{11AB}"),
            Ok(Some("\u{D55C}".into()))
        );
        assert_eq!(nickname("e\u{301}"), Ok(Some("\u{E9}".into())));
        for (bad, why) in [
            ("mina\nadmin", NameError::Control),
            ("a\rb", NameError::Control),
            ("\u{1b}[31mred", NameError::Control),
            ("ding\u{7}", NameError::Control),
            ("a\u{85}b", NameError::Control),
            ("a\u{2028}b", NameError::Control),
            ("abc\u{202E}fed", NameError::Bidi),
            ("\u{2066}x", NameError::Bidi),
            ("x\u{200F}", NameError::Bidi),
            ("\u{200B}", NameError::Invisible),
            (
                "\u{200B}\u{200C}\u{200D}\u{2060}\u{FEFF}",
                NameError::Invisible,
            ),
            ("\u{301}\u{302}", NameError::Invisible),
            ("\u{3164}", NameError::Invisible),
            (" \u{3000}\u{200B} ", NameError::Invisible),
        ] {
            assert_eq!(nickname(bad), Err(why), "{bad:?}");
        }
        assert_eq!(nickname(&"가".repeat(64)), Ok(Some("가".repeat(64))));
        assert_eq!(
            nickname(&"가".repeat(65)),
            Err(NameError::TooLong { max: 64 })
        );
        // 64 syllables typed as jamo: 192 code points, 64 after NFC.
        let jamo = "\u{1100}\u{1161}".repeat(64);
        assert_eq!(nickname(&jamo), Ok(Some("가".repeat(64))));
        // A joiner inside an emoji sequence is fine next to what shows.
        assert!(nickname("👩\u{200D}💻").is_ok());
        assert_eq!(
            room_name(&"r".repeat(101)),
            Err(NameError::TooLong { max: 100 })
        );
    }

    #[test]
    fn every_line_separator_breaks_lines() {
        let separators: Vec<char> = (0..=u32::from(char::MAX))
            .filter_map(char::from_u32)
            .filter(|c| {
                matches!(
                    c.general_category(),
                    GeneralCategory::LineSeparator | GeneralCategory::ParagraphSeparator
                )
            })
            .collect();
        assert_eq!(separators, ['\u{2028}', '\u{2029}']);
        assert!(separators.into_iter().all(breaks_lines));
    }

    #[test]
    fn system_texts_stay_one_line() {
        let forged = "mina 님이 나가셨습니다\nadmin 님이 입장하셨습니다";
        let text = SystemText::Left { nickname: forged }.render();
        assert!(!text.contains('\n'), "{text}");
        assert_eq!(
            text,
            "mina 님이 나가셨습니다\u{FFFD}admin 님이 입장하셨습니다 님이 나가셨습니다"
        );
        assert_eq!(
            SystemText::Joined { nickname: "미나" }.render(),
            "미나 님이 입장하셨습니다"
        );
        assert_eq!(
            SystemText::Created {
                room: "잡담\u{202E}",
                creator: "준"
            }
            .render(),
            "대화방 \"잡담\u{FFFD}\"을 준 님이 만들었습니다"
        );
        assert!(matches!(printable("plain"), Cow::Borrowed("plain")));
    }
}
