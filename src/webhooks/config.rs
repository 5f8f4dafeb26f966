//! `KLAV_WEBHOOK_URL`, `KLAV_WEBHOOK_SECRET` and `KLAV_WEBHOOK_THREADS`, read
//! with the rest of the configuration (`config` calls [`from_vars`] and turns
//! an [`Invalid`] into its own error).

/// Shortest `KLAV_WEBHOOK_SECRET` accepted: 256 bits, the size of the
/// HMAC-SHA256 key. A short secret lets anyone who sees a signed request
/// recover it offline and forge events.
pub const MIN_SECRET_BYTES: usize = 32;

/// Delivery threads per node by default. Each has up to 16 rooms' events in
/// flight: a receiver that answers in 50 ms gets up to ~1,280 events a second
/// from each node, from up to 64 rooms at once.
pub const DEFAULT_THREADS: usize = 4;

/// Where events go and how they are signed.
#[derive(Clone)]
pub struct WebhookConfig {
    /// `KLAV_WEBHOOK_URL`: an `http://` or `https://` URL events are POSTed to.
    pub url: String,
    /// `KLAV_WEBHOOK_SECRET`: the HMAC-SHA256 key of `Klav-Signature`.
    pub secret: Vec<u8>,
    /// `KLAV_WEBHOOK_THREADS` (default 4): delivery threads on this node.
    pub threads: usize,
}

impl std::fmt::Debug for WebhookConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The secret is never printed.
        f.debug_struct("WebhookConfig")
            .field("url", &self.url)
            .field("threads", &self.threads)
            .finish_non_exhaustive()
    }
}

/// A webhook setting refused: which, its value (a secret's only by length),
/// and what was expected.
#[derive(Debug)]
pub struct Invalid {
    pub var: &'static str,
    pub value: String,
    pub expected: &'static str,
}

impl std::fmt::Display for Invalid {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let Invalid {
            var,
            value,
            expected,
        } = self;
        write!(f, "{var}={value:?} is not valid: expected {expected}")
    }
}

/// The webhook settings from the variables `get` reads: `None` when
/// `KLAV_WEBHOOK_URL` is unset (webhooks off, at no cost); an error for a URL
/// that is not http(s), a missing or short secret, or a bad thread count.
pub fn from_vars<'a>(
    get: impl Fn(&str) -> Option<&'a str>,
) -> Result<Option<WebhookConfig>, Invalid> {
    let Some(url) = get("KLAV_WEBHOOK_URL") else {
        return Ok(None);
    };
    let rest = url
        .strip_prefix("http://")
        .or_else(|| url.strip_prefix("https://"));
    if rest.is_none_or(|r| r.is_empty() || r.starts_with('/') || r.contains(char::is_whitespace)) {
        return Err(Invalid {
            var: "KLAV_WEBHOOK_URL",
            value: url.to_string(),
            expected: "an http:// or https:// URL, e.g. https://example.com/klav-events",
        });
    }
    let secret = get("KLAV_WEBHOOK_SECRET").unwrap_or_default();
    if secret.len() < MIN_SECRET_BYTES {
        return Err(Invalid {
            var: "KLAV_WEBHOOK_SECRET",
            value: format!("({} bytes, not shown)", secret.len()),
            expected: "at least 32 bytes when KLAV_WEBHOOK_URL is set \
                       (e.g. `openssl rand -hex 32`)",
        });
    }
    let threads = match get("KLAV_WEBHOOK_THREADS") {
        None => DEFAULT_THREADS,
        Some(v) => v
            .parse::<usize>()
            .ok()
            .filter(|n| (1..=64).contains(n))
            .ok_or_else(|| Invalid {
                var: "KLAV_WEBHOOK_THREADS",
                value: v.to_string(),
                expected: "a whole number from 1 to 64",
            })?,
    };
    Ok(Some(WebhookConfig {
        url: url.to_string(),
        secret: secret.as_bytes().to_vec(),
        threads,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn parse(vars: &[(&str, &str)]) -> Result<Option<WebhookConfig>, Invalid> {
        let m: HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        from_vars(|k| m.get(k).map(String::as_str))
    }

    #[test]
    fn off_unless_a_url_is_set() {
        assert!(parse(&[]).unwrap().is_none());
        assert!(parse(&[("KLAV_WEBHOOK_SECRET", "x")]).unwrap().is_none());
    }

    #[test]
    fn a_url_needs_a_long_secret() {
        let url = ("KLAV_WEBHOOK_URL", "https://hooks.example.com/klav");
        let e = parse(&[url]).err().unwrap().to_string();
        assert!(e.contains("KLAV_WEBHOOK_SECRET"), "{e}");
        let e = parse(&[url, ("KLAV_WEBHOOK_SECRET", "short-secret")])
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains("12 bytes") && !e.contains("short-secret"), "{e}");
        let long = "k".repeat(MIN_SECRET_BYTES);
        let c = parse(&[url, ("KLAV_WEBHOOK_SECRET", &long)])
            .unwrap()
            .unwrap();
        assert_eq!(c.threads, DEFAULT_THREADS);
        assert!(!format!("{c:?}").contains(&long));
    }

    #[test]
    fn only_http_urls() {
        let long = "k".repeat(MIN_SECRET_BYTES);
        for bad in ["ftp://x/y", "hooks.example.com", "http://", "https:///path"] {
            let e = parse(&[("KLAV_WEBHOOK_URL", bad), ("KLAV_WEBHOOK_SECRET", &long)]);
            assert!(e.is_err(), "{bad}");
        }
        let ok = parse(&[
            ("KLAV_WEBHOOK_URL", "http://127.0.0.1:9000/in"),
            ("KLAV_WEBHOOK_SECRET", &long),
            ("KLAV_WEBHOOK_THREADS", "2"),
        ]);
        assert_eq!(ok.unwrap().unwrap().threads, 2);
    }
}
