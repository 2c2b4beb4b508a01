//! Scanning everything a run printed, served or recorded (logs at every level, `/metrics`,
//! Events, command output, error answers) for the secrets the test planted: client secrets,
//! private keys, the tokens handed out. A hit fails the test naming which secret was found in
//! what, and where, without printing the secret itself.
//!
//! ```
//! let mut scan = podid_testkit::secret_scan::SecretScan::default();
//! scan.plant_secret("client secret of app-1", "s3cr3t-Value-0123456789");
//! scan.forbid_any_jwt();
//! scan.scan("the agent's log", "GET /token 200 elapsed_ms=3");
//! assert_eq!(scan.planted(), 1);
//! ```

use base64::Engine;
use base64::engine::general_purpose::STANDARD;

/// What a planted secret is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// A client secret or password.
    Secret,
    /// A private key.
    PrivateKey,
    /// A token handed to a workload (it rightly appears in that workload's own answer).
    Token,
}

struct Planted {
    label: String,
    kind: Kind,
    /// The forms it is looked for in (its own text, encodings of it, distinctive parts).
    needles: Vec<String>,
}

/// The planted secrets, and what has been scanned for them.
#[derive(Default)]
pub struct SecretScan {
    planted: Vec<Planted>,
    any_jwt: bool,
    scanned: Vec<(String, usize)>,
}

/// A form of `value` worth looking for: long enough not to occur by chance.
fn distinctive(value: &str) -> bool {
    value.len() >= 12
}

impl SecretScan {
    fn plant(&mut self, label: &str, kind: Kind, needles: Vec<String>) {
        let mut needles: Vec<String> = needles.into_iter().filter(|n| distinctive(n)).collect();
        needles.sort();
        needles.dedup();
        assert!(
            !needles.is_empty(),
            "{label}: too short to be found reliably (12 characters at least)"
        );
        self.planted.push(Planted {
            label: label.to_owned(),
            kind,
            needles,
        });
    }

    /// A client secret or password: looked for as is, base64-encoded (a Secret's `data`), and
    /// form-encoded (the body of a token request).
    pub fn plant_secret(&mut self, label: &str, value: &str) {
        // application/x-www-form-urlencoded, as token requests are sent.
        let form: String = value
            .bytes()
            .map(|b| match b {
                b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'*' => {
                    (b as char).to_string()
                }
                b' ' => "+".to_owned(),
                _ => format!("%{b:02X}"),
            })
            .collect();
        self.plant(
            label,
            Kind::Secret,
            vec![value.to_owned(), STANDARD.encode(value), form],
        );
    }

    /// A PEM private key: each line of its base64 body, a stretch from the middle of its DER
    /// as hex and as Rust's `Debug` of bytes, and a stretch from the middle of the whole PEM's
    /// base64 (a Secret's `data` holding it).
    pub fn plant_private_key(&mut self, label: &str, pem: &str) {
        let body: Vec<&str> = pem
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty() && !l.starts_with("-----"))
            .collect();
        let der = STANDARD
            .decode(body.concat())
            .unwrap_or_else(|e| panic!("{label}: not a PEM key: {e}"));
        let mid = &der[der.len() / 2..der.len() / 2 + 16];
        let hex: String = mid.iter().map(|b| format!("{b:02x}")).collect();
        let debug = format!("{mid:?}");
        let encoded = STANDARD.encode(pem);
        let half = encoded.len() / 2;
        let mut needles: Vec<String> = body.iter().map(|l| (*l).to_owned()).collect();
        needles.extend([
            hex,
            debug[1..debug.len() - 1].to_owned(),
            encoded[half..half + 32].to_owned(),
        ]);
        self.plant(label, Kind::PrivateKey, needles);
    }

    /// A token handed to a workload: looked for whole and by its signature.
    pub fn plant_token(&mut self, label: &str, token: &str) {
        let mut needles = vec![token.to_owned()];
        if let Some(sig) = token.rsplit('.').next() {
            needles.push(sig.to_owned());
        }
        self.plant(label, Kind::Token, needles);
    }

    /// Also fail on any JWT at all: `eyJ` begins the base64url JSON header of every one.
    pub fn forbid_any_jwt(&mut self) {
        self.any_jwt = true;
    }

    /// Fails if `text` (the output `what` names) holds any planted secret, or any JWT when
    /// forbidden; counts its bytes as scanned.
    pub fn scan(&mut self, what: &str, text: &str) {
        self.scan_kinds(
            what,
            text,
            &[Kind::Secret, Kind::PrivateKey, Kind::Token],
            true,
        );
    }

    /// [`SecretScan::scan`] for client secrets and private keys only: for an answer that rightly
    /// carries the caller's own token.
    pub fn scan_credentials(&mut self, what: &str, text: &str) {
        self.scan_kinds(what, text, &[Kind::Secret, Kind::PrivateKey], false);
    }

    fn scan_kinds(&mut self, what: &str, text: &str, kinds: &[Kind], jwts: bool) {
        for p in self.planted.iter().filter(|p| kinds.contains(&p.kind)) {
            for (i, needle) in p.needles.iter().enumerate() {
                if let Some(at) = text.find(needle.as_str()) {
                    panic!(
                        "{} (form {i} of {}) is in {what} at byte {at}; before it: {:?}",
                        p.label,
                        p.needles.len(),
                        &text[text.floor_char_boundary(at.saturating_sub(120))..at]
                    );
                }
            }
        }
        if jwts
            && self.any_jwt
            && let Some(at) = text.find("eyJ")
        {
            panic!(
                "a JWT is in {what} at byte {at}; before it: {:?}",
                &text[text.floor_char_boundary(at.saturating_sub(120))..at]
            );
        }
        self.scanned.push((what.to_owned(), text.len()));
    }

    /// How many secrets were planted.
    pub fn planted(&self) -> usize {
        self.planted.len()
    }

    /// How many were planted of `kind`.
    pub fn planted_of(&self, kind: Kind) -> usize {
        self.planted.iter().filter(|p| p.kind == kind).count()
    }

    /// Bytes scanned so far, over every output.
    pub fn bytes(&self) -> usize {
        self.scanned.iter().map(|(_, n)| n).sum()
    }

    /// One line: what was planted and how much of what was scanned.
    pub fn summary(&self) -> String {
        let mut by_output: Vec<(String, usize, usize)> = Vec::new();
        for (what, n) in &self.scanned {
            match by_output.iter_mut().find(|(w, _, _)| w == what) {
                Some(e) => {
                    e.1 += n;
                    e.2 += 1;
                }
                None => by_output.push((what.clone(), *n, 1)),
            }
        }
        format!(
            "{} secrets planted ({} client secrets, {} private keys, {} tokens); {} bytes scanned in {} outputs: {}",
            self.planted(),
            self.planted_of(Kind::Secret),
            self.planted_of(Kind::PrivateKey),
            self.planted_of(Kind::Token),
            self.bytes(),
            self.scanned.len(),
            by_output
                .iter()
                .map(|(w, n, c)| if *c > 1 {
                    format!("{w} {n} ({c}×)")
                } else {
                    format!("{w} {n}")
                })
                .collect::<Vec<_>>()
                .join(", ")
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A PEM-shaped key of made-up bytes.
    fn key() -> String {
        let der: Vec<u8> = (0..600u32).map(|i| (i * 7 + i / 13) as u8).collect();
        let body = STANDARD.encode(der);
        let lines: Vec<&str> = body
            .as_bytes()
            .chunks(64)
            .map(|c| std::str::from_utf8(c).unwrap())
            .collect();
        format!(
            "-----BEGIN PRIVATE KEY-----\n{}\n-----END PRIVATE KEY-----\n",
            lines.join("\n")
        )
    }

    fn caught(f: impl FnOnce() + std::panic::UnwindSafe) -> bool {
        std::panic::catch_unwind(f).is_err()
    }

    #[test]
    fn a_secret_is_found_as_is_and_encoded() {
        for text in [
            "client_secret=abc%2Bdef-ghi-jkl&x=1".to_owned(),
            "data: YWJjK2RlZi1naGktamts".to_owned(),
            "secret abc+def-ghi-jkl in a log".to_owned(),
        ] {
            let shown = text.clone();
            assert!(
                caught(move || {
                    let mut s = SecretScan::default();
                    s.plant_secret("s", "abc+def-ghi-jkl");
                    s.scan("t", &text);
                }),
                "{shown}"
            );
        }
        let mut s = SecretScan::default();
        s.plant_secret("s", "abc+def-ghi-jkl");
        s.scan("t", "nothing here: abc+def");
        assert_eq!((s.planted(), s.bytes()), (1, 21));
    }

    #[test]
    fn a_key_is_found_by_any_line_or_in_a_hex_dump() {
        let key = key();
        let der = STANDARD
            .decode(
                key.lines()
                    .filter(|l| !l.starts_with("-----"))
                    .collect::<String>(),
            )
            .unwrap();
        let mid = &der[der.len() / 2..der.len() / 2 + 16];
        let hex: String = mid.iter().map(|b| format!("{b:02x}")).collect();
        for text in [
            key.lines().nth(3).unwrap().to_owned(),
            format!("bytes: {hex}"),
            format!("key: {mid:?}"),
            STANDARD.encode(&key),
        ] {
            let (key, shown) = (key.clone(), text.clone());
            assert!(
                caught(move || {
                    let mut s = SecretScan::default();
                    s.plant_private_key("k", &key);
                    s.scan("t", &text);
                }),
                "{shown}"
            );
        }
    }

    #[test]
    fn a_token_is_allowed_where_credentials_only_are_scanned() {
        let token = "eyJhbGciOiJSUzI1NiJ9.eyJhcHBpZCI6IngifQ.c2lnbmF0dXJlLW9mLXRoZS10b2tlbg";
        let mut s = SecretScan::default();
        s.plant_token("t", token);
        s.forbid_any_jwt();
        s.scan_credentials("its own answer", token);
        assert!(caught(move || {
            let mut s = SecretScan::default();
            s.plant_token("t", token);
            s.scan("a log", "sig c2lnbmF0dXJlLW9mLXRoZS10b2tlbg");
        }));
        assert!(caught(|| {
            let mut s = SecretScan::default();
            s.forbid_any_jwt();
            s.scan("a log", "Bearer eyJ0eXAi");
        }));
    }
}
