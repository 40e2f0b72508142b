//! A small YAML emitter for the generated files: block mappings and sequences of strings,
//! each scalar plain only when every YAML reader reads it back as the same string.

pub fn indent(out: &mut String, n: usize) {
    const SPACES: &str = "                ";
    out.push_str(&SPACES[..n.min(SPACES.len())]);
}

pub fn field(out: &mut String, depth: usize, key: &str, value: &str) {
    indent(out, depth);
    scalar(out, key);
    out.push_str(": ");
    scalar(out, value);
    out.push('\n');
}

/// A block sequence at the same indentation as its key.
pub fn list<S: AsRef<str>>(out: &mut String, depth: usize, values: &[S]) {
    for v in values {
        indent(out, depth);
        out.push_str("- ");
        scalar(out, v.as_ref());
        out.push('\n');
    }
}

/// `5s`, `4500ms`, `1m`: digits and one unit, never read as a number.
pub fn is_duration(s: &str) -> bool {
    let unit = s.trim_start_matches(|c: char| c.is_ascii_digit());
    unit.len() < s.len() && matches!(unit, "ms" | "s" | "m" | "h" | "d" | "w")
}

/// `10.0.0.1:42000`: four numbers with dots, a colon and a port, never read as a number.
pub fn is_ipv4_target(s: &str) -> bool {
    let digits = |p: &str| !p.is_empty() && p.len() <= 5 && p.bytes().all(|b| b.is_ascii_digit());
    match s.split_once(':') {
        Some((host, port)) => {
            let parts: Vec<&str> = host.split('.').collect();
            parts.len() == 4 && parts.iter().all(|p| digits(p)) && digits(port)
        }
        None => false,
    }
}

/// A string scalar: plain when safe, else double-quoted with every character a YAML reader
/// could take for something else escaped.
pub fn scalar(out: &mut String, s: &str) {
    if plain_is_safe(s) {
        out.push_str(s);
    } else {
        quoted(out, s);
    }
}

/// A YAML double-quoted scalar. Escaped: `"` and `\`; C0 and C1 controls and DEL (YAML readers
/// refuse some raw); NEL, LS and PS (read as line breaks); U+FFFE and U+FFFF; and `%`, because
/// VictoriaMetrics and vmagent replace `%{NAME}` with an environment variable anywhere in the
/// file before they parse it (a label value must not be able to read the server's
/// environment).
pub fn quoted(out: &mut String, s: &str) {
    use std::fmt::Write as _;
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\t' => out.push_str("\\t"),
            '\r' => out.push_str("\\r"),
            '%' => out.push_str("\\x25"),
            c if (c as u32) < 0x20 || (0x7f..=0x9f).contains(&(c as u32)) => {
                let _ = write!(out, "\\x{:02x}", c as u32);
            }
            '\u{2028}' | '\u{2029}' | '\u{fffe}' | '\u{ffff}' => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

/// True when `s` reads back as this same string in YAML 1.1 and 1.2 plain style: a restricted
/// alphabet, a safe first character, and not a word or number the parsers would turn into
/// something else.
pub fn plain_is_safe(s: &str) -> bool {
    let Some(first) = s.chars().next() else {
        return false;
    };
    if first.is_ascii_digit() {
        return is_duration(s) || is_ipv4_target(s);
    }
    if !(first.is_ascii_alphabetic() || first == '/' || first == '_') {
        return false;
    }
    if !s
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.' | '/' | '[' | ']'))
    {
        return false;
    }
    const SPECIAL: [&str; 11] = [
        "y", "n", "yes", "no", "on", "off", "true", "false", "null", "nan", "inf",
    ];
    !SPECIAL.iter().any(|w| s.eq_ignore_ascii_case(w))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scalars_are_plain_only_when_they_read_back_as_themselves() {
        for plain in [
            "pmm-server",
            "/metrics",
            "collect[]",
            "node_exporter_a-1_hr",
            "eu-west-1a",
            "5s",
            "4500ms",
            "1m",
            "10.0.0.1:42000",
        ] {
            assert!(plain_is_safe(plain), "{plain}");
        }
        for quoted in [
            "", "yes", "No", "true", "null", "5s0", "10:30", "1.2.3:4", "a b", "-x", "#x", "x: y",
            "on", "0x10", "1e3", "é", "12", "1.5",
        ] {
            assert!(!plain_is_safe(quoted), "{quoted}");
        }
    }
}
