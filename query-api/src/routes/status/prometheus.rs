//! Just enough of the Prometheus text exposition format (version 0.0.4) to read the services' own
//! `/metrics`: one sample per line, `name{label="value",…} value [timestamp]`; comments, `# HELP`
//! and `# TYPE` lines are skipped, and so is any line that does not parse.

/// One line of a scrape.
#[derive(Debug, Clone, PartialEq)]
pub struct Line {
    pub name: String,
    pub labels: Vec<(String, String)>,
    pub value: f64,
}

impl Line {
    pub fn label(&self, name: &str) -> Option<&str> {
        self.labels
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

/// Every sample line of `text` that parses.
pub fn parse(text: &str) -> Vec<Line> {
    text.lines().filter_map(parse_line).collect()
}

fn parse_line(line: &str) -> Option<Line> {
    let line = line.trim();
    if line.is_empty() || line.starts_with('#') {
        return None;
    }
    let name_end = line
        .find(|c: char| c == '{' || c.is_whitespace())
        .unwrap_or(line.len());
    let name = &line[..name_end];
    if name.is_empty() {
        return None;
    }
    let mut rest = &line[name_end..];
    let mut labels = Vec::new();
    if let Some(after_brace) = rest.strip_prefix('{') {
        let (parsed, after) = parse_labels(after_brace)?;
        labels = parsed;
        rest = after;
    }
    // The value, then an optional timestamp.
    let value = parse_value(rest.split_whitespace().next()?)?;
    Some(Line {
        name: name.to_string(),
        labels,
        value,
    })
}

/// `a="x",b="y\"z"}` → the labels and what follows the closing brace.
fn parse_labels(mut s: &str) -> Option<(Vec<(String, String)>, &str)> {
    let mut labels = Vec::new();
    loop {
        s = s.trim_start_matches([' ', ',']);
        if let Some(after) = s.strip_prefix('}') {
            return Some((labels, after));
        }
        let eq = s.find('=')?;
        let key = s[..eq].trim().to_string();
        s = s[eq + 1..].trim_start().strip_prefix('"')?;
        let mut value = String::new();
        let mut chars = s.char_indices();
        let end = loop {
            let (i, c) = chars.next()?;
            match c {
                '"' => break i,
                '\\' => match chars.next()?.1 {
                    'n' => value.push('\n'),
                    other => value.push(other),
                },
                other => value.push(other),
            }
        };
        labels.push((key, value));
        s = &s[end + 1..];
    }
}

fn parse_value(s: &str) -> Option<f64> {
    match s {
        "+Inf" | "Inf" => Some(f64::INFINITY),
        "-Inf" => Some(f64::NEG_INFINITY),
        "NaN" => Some(f64::NAN),
        other => other.parse().ok(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_with_and_without_labels_parse_and_comments_are_skipped() {
        let text = "# HELP commands_total Commands.\n\
                    # TYPE commands_total counter\n\
                    commands_total{command=\"place\",outcome=\"accepted\"} 12\n\
                    command_oldest_unpublished_intent_seconds 0\n\
                    \n\
                    weird{route=\"/a \\\"b\\\",c\\\\d\",x=\"\"} 1.5e3 1700000000000\n\
                    projector_apply_seconds_bucket{projection=\"orders\",le=\"+Inf\"} +Inf\n\
                    broken{oops 1\n";
        let lines = parse(text);
        assert_eq!(lines.len(), 4, "{lines:?}");
        assert_eq!(lines[0].name, "commands_total");
        assert_eq!(lines[0].label("outcome"), Some("accepted"));
        assert_eq!(lines[0].value, 12.0);
        assert_eq!(lines[1].labels, vec![]);
        assert_eq!(lines[1].value, 0.0);
        assert_eq!(lines[2].label("route"), Some("/a \"b\",c\\d"));
        assert_eq!(lines[2].label("x"), Some(""));
        assert_eq!(lines[2].value, 1500.0);
        assert_eq!(lines[3].label("le"), Some("+Inf"));
        assert!(lines[3].value.is_infinite());
    }
}
