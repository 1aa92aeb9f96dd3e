//! Object keys: the names files get in a bucket. Names that come from outside (a multipart
//! filename, a script's `file_key`) are checked or cleaned here, so that no key can climb out
//! of its place (`..`), hide a second path (`/` in a filename) or carry control characters.

use uuid::Uuid;

/// S3 allows 1024 bytes; the rest is left for a workspace prefix.
const MAX_KEY_LEN: usize = 900;
/// Longest name kept from a client's filename or field name.
const MAX_NAME_LEN: usize = 200;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("invalid file key {key:?}: {why}")]
pub struct InvalidKey {
    pub key: String,
    pub why: &'static str,
}

/// A key a caller named (`file_key` of the job helpers): `a/b/c.txt`. One leading `/` is
/// dropped (Windmill's examples write `/path/to/file`); empty, `.` and `..` segments, `\` and
/// control characters are refused.
pub fn check_key(raw: &str) -> Result<String, InvalidKey> {
    let invalid = |why| InvalidKey {
        key: raw.to_owned(),
        why,
    };
    let key = raw.strip_prefix('/').unwrap_or(raw);
    if key.is_empty() {
        return Err(invalid("it is empty"));
    }
    if key.len() > MAX_KEY_LEN {
        return Err(invalid("it is too long"));
    }
    if key.chars().any(|c| c.is_control() || c == '\\') {
        return Err(invalid("it holds a control character or a backslash"));
    }
    if key
        .split('/')
        .any(|s| s.is_empty() || s == "." || s == "..")
    {
        return Err(invalid("it has an empty, `.` or `..` segment"));
    }
    Ok(key.to_owned())
}

/// A client's filename (or form field name) made safe as one key segment: only what follows
/// the last `/` or `\`, control characters replaced, and never empty, `.` or `..`.
pub fn sanitize_name(raw: &str) -> String {
    let last = raw
        .rsplit(['/', '\\'])
        .map(str::trim)
        .find(|s| !s.is_empty() && *s != "." && *s != "..")
        .unwrap_or_default();
    let mut name: String = last
        .chars()
        .map(|c| if c.is_control() { '_' } else { c })
        .collect();
    if name.len() > MAX_NAME_LEN {
        let mut end = MAX_NAME_LEN;
        while !name.is_char_boundary(end) {
            end -= 1;
        }
        name.truncate(end);
    }
    // Dots alone would be `.`/`..` again once trimmed by a file system.
    if name.chars().all(|c| c == '.') {
        return "file".to_owned();
    }
    name
}

/// Where a webhook's uploaded file goes: `webhook_uploads/<job id>/<field>/<filename>`.
pub fn webhook_upload_key(job: Uuid, field: &str, filename: &str) -> String {
    format!(
        "webhook_uploads/{job}/{}/{}",
        sanitize_name(field),
        sanitize_name(filename)
    )
}

/// A fresh key for a script's upload that names none, like Windmill's.
pub fn generated_key(extension: Option<&str>) -> String {
    let id = Uuid::new_v4();
    match extension
        .map(|e| e.trim_start_matches('.'))
        .filter(|e| !e.is_empty() && e.len() <= 16 && e.chars().all(|c| c.is_ascii_alphanumeric()))
    {
        Some(ext) => format!("windmill_uploads/{id}.{ext}"),
        None => format!("windmill_uploads/{id}"),
    }
}

/// `name`, or `stem-N.ext` for the N-th repeat of a name already used in the same place.
pub fn numbered(name: &str, n: usize) -> String {
    if n == 0 {
        return name.to_owned();
    }
    match name.rsplit_once('.') {
        Some((stem, ext)) if !stem.is_empty() => format!("{stem}-{n}.{ext}"),
        _ => format!("{name}-{n}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn caller_keys_cannot_climb_out() {
        assert_eq!(check_key("a/b.txt").unwrap(), "a/b.txt");
        assert_eq!(check_key("/a/b.txt").unwrap(), "a/b.txt");
        for bad in [
            "", "/", "../x", "a/../b", "a//b", "a/./b", "a/", "a\\b", "a\nb", "//a",
        ] {
            assert!(check_key(bad).is_err(), "{bad:?}");
        }
        assert!(check_key(&"x".repeat(901)).is_err());
    }

    #[test]
    fn client_names_become_one_safe_segment() {
        assert_eq!(sanitize_name("report.pdf"), "report.pdf");
        assert_eq!(sanitize_name("../../etc/passwd"), "passwd");
        assert_eq!(sanitize_name("C:\\Users\\me\\a.txt"), "a.txt");
        assert_eq!(sanitize_name("x/.."), "x");
        assert_eq!(sanitize_name(".."), "file");
        assert_eq!(sanitize_name(""), "file");
        assert_eq!(sanitize_name("...."), "file");
        assert_eq!(sanitize_name("a\u{0}b"), "a_b");
        assert_eq!(sanitize_name("été.txt"), "été.txt");
        assert!(sanitize_name(&"é".repeat(300)).len() <= MAX_NAME_LEN);
        let job = Uuid::nil();
        let key = webhook_upload_key(job, "../f", "../../a.txt");
        assert_eq!(key, format!("webhook_uploads/{job}/f/a.txt"));
        assert!(check_key(&key).is_ok());
    }

    #[test]
    fn generated_and_numbered_names() {
        assert!(generated_key(Some("csv")).ends_with(".csv"));
        assert!(!generated_key(Some("../x")).contains(".."));
        assert!(check_key(&generated_key(None)).is_ok());
        assert_eq!(numbered("a.txt", 0), "a.txt");
        assert_eq!(numbered("a.txt", 2), "a-2.txt");
        assert_eq!(numbered(".env", 1), ".env-1");
        assert_eq!(numbered("README", 1), "README-1");
    }
}
