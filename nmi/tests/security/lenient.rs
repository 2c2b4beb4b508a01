//! A model of the most lenient server the agent could forward to, shared by the path attack
//! tests and the fuzz target (`fuzz/`, `parse_request`).

/// The path as the most lenient server behind the agent could read it: percent-decoded,
/// backslashes as slashes, `;` parameters dropped, dot segments resolved, in any case.
pub fn lenient_reading(path: &str) -> String {
    let mut bytes = Vec::new();
    let raw = path.as_bytes();
    let mut i = 0;
    while i < raw.len() {
        let hex = raw
            .get(i + 1..i + 3)
            .and_then(|h| std::str::from_utf8(h).ok())
            .and_then(|h| u8::from_str_radix(h, 16).ok());
        match (raw[i], hex) {
            (b'%', Some(b)) => {
                bytes.push(b);
                i += 3;
            }
            (b, _) => {
                bytes.push(b);
                i += 1;
            }
        }
    }
    let decoded = String::from_utf8_lossy(&bytes).replace('\\', "/");
    let without_params: Vec<&str> = decoded
        .split('/')
        .map(|seg| seg.split(';').next().unwrap_or(""))
        .collect();
    podid_nmi::request::clean_path(&without_params.join("/")).to_ascii_lowercase()
}
