//! Compose's variable syntax: `${VAR}` substitution in compose files and the `.env` file
//! format, both as compose-go (the library inside `docker compose` v2) implements them,
//! quirks included: a default or error message is itself substituted before the variable
//! is looked up, so `${A:-${B:?}}` fails when `B` is unset even if `A` is set.
use std::collections::BTreeMap;

use anyhow::{bail, Context as _};

/// Variables that substitution reads: the process environment, then the `.env` file.
pub type Vars = BTreeMap<String, String>;

/// Substitutes `$VAR`, `${VAR}`, `${VAR:-default}`, `${VAR-default}`, `${VAR:?err}`,
/// `${VAR?err}`, `${VAR:+alt}`, `${VAR+alt}` and `$$` in `template`. An unset plain variable
/// becomes the empty string and adds a message to `warnings`, as compose warns.
pub fn substitute(
    template: &str,
    vars: &Vars,
    warnings: &mut Vec<String>,
) -> anyhow::Result<String> {
    let mut out = String::with_capacity(template.len());
    let mut rest = template;
    while let Some(dollar) = rest.find('$') {
        out.push_str(&rest[..dollar]);
        let after = &rest[dollar + 1..];
        if let Some(tail) = after.strip_prefix('$') {
            out.push('$');
            rest = tail;
        } else if after.starts_with('{') {
            let Some(close) = closing_brace(&rest[dollar..]) else {
                return Err(invalid(template));
            };
            let inner = &rest[dollar + 2..dollar + close];
            out.push_str(&braced(inner, template, vars, warnings)?);
            rest = &rest[dollar + close + 1..];
        } else {
            let len = name_len(after);
            if len == 0 {
                // `$` before anything that is not a name stays as written.
                out.push('$');
            } else {
                out.push_str(&lookup(&after[..len], vars, warnings));
            }
            rest = &after[len..];
        }
    }
    out.push_str(rest);
    Ok(out)
}

fn invalid(template: &str) -> anyhow::Error {
    anyhow::anyhow!("invalid interpolation format {template:?}: write a literal $ as $$")
}

/// Index of the `}` closing the `${` at the start of `s`, counting nested `${`.
fn closing_brace(s: &str) -> Option<usize> {
    let bytes = s.as_bytes();
    let mut depth = 0usize;
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'}' {
            depth = depth.saturating_sub(1);
            if depth == 0 {
                return Some(i);
            }
        }
        if bytes[i] == b'$' && bytes.get(i + 1) == Some(&b'{') {
            depth += 1;
            i += 1;
        }
        i += 1;
    }
    None
}

/// Length of the variable name at the start of `s`: `[_a-zA-Z][_a-zA-Z0-9]*`.
fn name_len(s: &str) -> usize {
    let bytes = s.as_bytes();
    match bytes.first() {
        Some(b) if b.is_ascii_alphabetic() || *b == b'_' => {}
        _ => return 0,
    }
    bytes
        .iter()
        .take_while(|b| b.is_ascii_alphanumeric() || **b == b'_')
        .count()
}

fn lookup(name: &str, vars: &Vars, warnings: &mut Vec<String>) -> String {
    match vars.get(name) {
        Some(value) => value.clone(),
        None => {
            warnings.push(format!(
                "the {name:?} variable is not set, defaulting to a blank string"
            ));
            String::new()
        }
    }
}

/// The inside of `${…}`: a name, then optionally an operator and its argument.
fn braced(
    inner: &str,
    template: &str,
    vars: &Vars,
    warnings: &mut Vec<String>,
) -> anyhow::Result<String> {
    let len = name_len(inner);
    let (name, op) = inner.split_at(len);
    if name.is_empty() {
        return Err(invalid(template));
    }
    if op.is_empty() {
        return Ok(lookup(name, vars, warnings));
    }
    let (colon, op) = match op.strip_prefix(':') {
        Some(op) => (true, op),
        None => (false, op),
    };
    let mut chars = op.chars();
    let Some(kind @ ('-' | '+' | '?')) = chars.next() else {
        return Err(invalid(template));
    };
    // compose's pattern matches the argument with `.*`, which stops at a newline.
    if chars.as_str().contains('\n') {
        return Err(invalid(template));
    }
    let argument = substitute(chars.as_str(), vars, warnings)?;
    let value = vars.get(name);
    let present = match value {
        Some(v) => !colon || !v.is_empty(),
        None => false,
    };
    Ok(match kind {
        '-' if present => value.cloned().unwrap_or_default(),
        '-' => argument,
        '+' if present => argument,
        '+' => value.cloned().unwrap_or_default(),
        _ if present => value.cloned().unwrap_or_default(),
        _ if argument.is_empty() => bail!("required variable {name} is missing a value"),
        _ => bail!("required variable {name} is missing a value: {argument}"),
    })
}

/// Parses a `.env` file as compose does: `KEY=VALUE`, `export KEY=VALUE`, `KEY: VALUE`,
/// `#` comments (inline only after a space in unquoted values), single quotes literal,
/// double quotes with escapes and substitution, a bare `KEY` taken from `env`.
/// Values substitute variables from `env` first, then from earlier lines.
pub fn parse_dotenv(text: &str, env: &Vars) -> anyhow::Result<Vars> {
    let text = text
        .strip_prefix('\u{feff}')
        .unwrap_or(text)
        .replace("\r\n", "\n");
    let mut vars = Vars::new();
    let mut rest = text.as_str();
    let mut line = 1;
    loop {
        rest = rest.trim_start_matches(|c: char| {
            if c == '\n' {
                line += 1;
            }
            c.is_whitespace()
        });
        if rest.is_empty() {
            break;
        }
        if rest.starts_with('#') {
            rest = rest.split_once('\n').map_or("", |(_, tail)| tail);
            line += 1;
            continue;
        }
        let statement_line = line;
        let (key, value, tail) = statement(rest, &vars, env, &mut line)
            .with_context(|| format!(".env line {statement_line}"))?;
        if let Some(value) = value {
            vars.insert(key, value);
        }
        rest = tail;
    }
    Ok(vars)
}

/// One `KEY=VALUE` statement at the start of `src`: the key, its value (`None` for a bare
/// key the environment does not set) and the text after it.
fn statement<'a>(
    src: &'a str,
    vars: &Vars,
    env: &Vars,
    line: &mut usize,
) -> anyhow::Result<(String, Option<String>, &'a str)> {
    let src = match src.strip_prefix("export") {
        Some(tail) if tail.starts_with([' ', '\t']) => tail.trim_start_matches([' ', '\t']),
        _ => src,
    };
    let end = src.find(['=', ':', '\n']).unwrap_or(src.len());
    let key = src[..end].trim();
    if key.is_empty() {
        bail!("missing variable name");
    }
    if let Some(bad) = key
        .chars()
        .find(|c| !(c.is_alphanumeric() || matches!(c, '_' | '.' | '-' | '[' | ']')))
    {
        bail!("unexpected character {bad:?} in variable name {key:?}");
    }
    let key = key.to_owned();
    if !src[end..].starts_with(['=', ':']) {
        // A bare `KEY`: inherited from the environment.
        return Ok((key.clone(), env.get(&key).cloned(), &src[end..]));
    }
    let src = src[end + 1..].trim_start_matches([' ', '\t']);
    let lookup = |vars: &Vars| {
        let mut all = vars.clone();
        all.extend(env.iter().map(|(k, v)| (k.clone(), v.clone())));
        all
    };
    let mut ignored = Vec::new();
    match src.chars().next() {
        Some(quote @ ('\'' | '"')) => {
            let body = &src[1..];
            let mut close = None;
            let mut escaped = false;
            for (i, c) in body.char_indices() {
                match c {
                    '\\' if !escaped => escaped = true,
                    c if c == quote && !escaped => {
                        close = Some(i);
                        break;
                    }
                    _ => escaped = false,
                }
            }
            let Some(close) = close else {
                bail!("unterminated quoted value");
            };
            let raw = &body[..close];
            *line += raw.matches('\n').count();
            let after = &body[close + 1..];
            let tail = after.split_once('\n').map_or("", |(_, tail)| tail);
            *line += 1;
            let value = if quote == '\'' {
                raw.to_owned()
            } else {
                substitute(&unescape(raw), &lookup(vars), &mut ignored)?
            };
            Ok((key, Some(value), tail))
        }
        _ => {
            let (value, tail) = src.split_once('\n').unwrap_or((src, ""));
            *line += 1;
            let value = value.split_once(" #").map_or(value, |(v, _)| v).trim_end();
            let value = substitute(value, &lookup(vars), &mut ignored)?;
            Ok((key, Some(value), tail))
        }
    }
}

/// Backslash escapes inside double quotes; `\$` stays a literal dollar.
fn unescape(raw: &str) -> String {
    let mut out = String::with_capacity(raw.len());
    let mut chars = raw.chars();
    while let Some(c) = chars.next() {
        if c != '\\' {
            out.push(c);
            continue;
        }
        match chars.next() {
            Some('n') => out.push('\n'),
            Some('r') => out.push('\r'),
            Some('t') => out.push('\t'),
            Some('$') => out.push_str("$$"),
            Some(c @ ('\\' | '"' | '\'')) => out.push(c),
            Some(c) => {
                out.push('\\');
                out.push(c);
            }
            None => out.push('\\'),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vars(pairs: &[(&str, &str)]) -> Vars {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn check(template: &str, expected: &str) {
        let vars = vars(&[
            ("SET", "set"),
            ("EMPTY", ""),
            ("lower", "low"),
            ("B", "bee"),
        ]);
        let actual = match substitute(template, &vars, &mut Vec::new()) {
            Ok(value) => value,
            Err(err) => format!("error: {err:#}"),
        };
        assert_eq!(actual, expected, "template {template:?}");
    }

    #[test]
    fn plain_and_braced() {
        check("a $SET b ${SET}c", "a set b setc");
        check("$SET_x ${lower}", " low");
        check("$UNSET|${UNSET}|", "||");
        check("$$SET $${SET} $$$SET", "$SET ${SET} $set");
        check(
            "cost: $5, $ alone, trailing $",
            "cost: $5, $ alone, trailing $",
        );
        check("${SET}}", "set}");
    }

    #[test]
    fn defaults_and_alternatives() {
        check("${UNSET:-d} ${EMPTY:-d} ${SET:-d}", "d d set");
        check("${UNSET-d} ${EMPTY-d} ${SET-d}", "d  set");
        check("${UNSET:+r} ${EMPTY:+r} ${SET:+r}", "  r");
        check("${UNSET+r} ${EMPTY+r} ${SET+r}", " r r");
        check("${UNSET:-${B}} ${UNSET:-${UNSET2:-deep}x}y", "bee deepxy");
        check("${UNSET:-a:-b} ${UNSET-x-y} ${UNSET:-}", "a:-b x-y ");
        check("${UNSET:-$$B}", "$B");
    }

    #[test]
    fn required() {
        check("${SET:?msg} ${EMPTY?msg}", "set ");
        check(
            "${EMPTY:?it must be set}",
            "error: required variable EMPTY is missing a value: it must be set",
        );
        check(
            "${UNSET?}",
            "error: required variable UNSET is missing a value",
        );
        check(
            "${UNSET:?need ${B}}",
            "error: required variable UNSET is missing a value: need bee",
        );
        // compose substitutes the default first, even when the variable is set
        check(
            "${SET:-${UNSET:?inner}}",
            "error: required variable UNSET is missing a value: inner",
        );
    }

    #[test]
    fn invalid_templates() {
        check(
            "${}",
            "error: invalid interpolation format \"${}\": write a literal $ as $$",
        );
        check(
            "${1A}",
            "error: invalid interpolation format \"${1A}\": write a literal $ as $$",
        );
        check(
            "${A B}",
            "error: invalid interpolation format \"${A B}\": write a literal $ as $$",
        );
        check(
            "${A:x}",
            "error: invalid interpolation format \"${A:x}\": write a literal $ as $$",
        );
        check(
            "x ${A",
            "error: invalid interpolation format \"x ${A\": write a literal $ as $$",
        );
    }

    #[test]
    fn unset_variables_warn() {
        let mut warnings = Vec::new();
        let value = substitute("$A ${B} ${C:-x}", &Vars::new(), &mut warnings).unwrap();
        assert_eq!(value, "  x");
        assert_eq!(warnings.len(), 2);
        assert!(warnings[0].contains("\"A\""), "{warnings:?}");
    }

    fn check_dotenv(text: &str, expected: &str) {
        let env = vars(&[
            ("PROC", "procv"),
            ("BARE", "bareenv"),
            ("E1", "process wins"),
        ]);
        let actual = match parse_dotenv(text, &env) {
            Ok(vars) => vars
                .iter()
                .map(|(k, v)| format!("{k}={v:?}\n"))
                .collect::<String>(),
            Err(err) => format!("error: {err:#}"),
        };
        assert_eq!(actual.trim_end(), expected.trim_end());
    }

    // Values checked against `docker compose config` (v2.26.1).
    #[test]
    fn dotenv_forms() {
        check_dotenv(
            "# comment\n\
             A=plain value # comment\n\
             B=\"dq \\n \\\" \\$A ${A} 'x'\" # c\n\
             C='sq ${A} \\n'\n\
             export D=exported\n\
             E = spaced\n\
             F: colon\n\
             G=${A:-d}x\n\
             H=a#b\n\
             I=\"multi\nline\"\n\
             J=\n\
             K=${PROC}\n\
             L=  lead\n\
             M=$$dollar\n\
             BARE\n\
             UNSET_BARE\n\
             N=\"a\" trailing\n\
             O=${E1}\n",
            r#"A="plain value"
B="dq \n \" $A plain value 'x'"
BARE="bareenv"
C="sq ${A} \\n"
D="exported"
E="spaced"
F="colon"
G="plain valuex"
H="a#b"
I="multi\nline"
J=""
K="procv"
L="lead"
M="$dollar"
N="a"
O="process wins""#,
        );
    }

    #[test]
    fn dotenv_crlf_bom_and_errors() {
        check_dotenv("\u{feff}A=1\r\nB='2'\r\n", "A=\"1\"\nB=\"2\"");
        check_dotenv(
            "A=1\nit's=2\n",
            "error: .env line 2: unexpected character '\\'' in variable name \"it's\"",
        );
        check_dotenv(
            "A=\"open\n",
            "error: .env line 1: unterminated quoted value",
        );
        check_dotenv(
            "A=${NEEDED:?set it}\n",
            "error: .env line 1: required variable NEEDED is missing a value: set it",
        );
    }
}
