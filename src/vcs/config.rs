//! Just enough of git's config syntax to find `remote.origin.url`, following git's own parser (`config.c`)
//! rather than an INI approximation: a value git reads one way must not be read another way here, or the
//! source annotation would name a repository the user never cloned. The text is walked once, character by
//! character, since quotes, escapes and `\` continuations do not respect lines; anything git would reject
//! is an error, which the caller reports as an unreadable config.

/// The first `url` of `[remote "origin"]` in git config text, with git's syntax: `[section "subsection"]`
/// (or the old `[section.subsection]`), case-insensitive section and key names, `#`/`;` comments, quoted
/// values with `\"`, `\\`, `\n`, `\t`, `\b` escapes, and `\` line continuations. An empty `url =` clears
/// the list, as git does since 2.46.
pub(super) fn origin_url(text: &str) -> std::result::Result<Option<String>, &'static str> {
    let mut chars = Chars::new(text.strip_prefix('\u{feff}').unwrap_or(text));
    let mut in_origin = false;
    let mut url: Option<String> = None;
    loop {
        let Some(c) = chars.next() else { return Ok(url) };
        match c {
            c if c.is_whitespace() => {}
            '#' | ';' => chars.skip_line(),
            '[' => in_origin = section_header(&mut chars)?,
            c if c.is_ascii_alphabetic() => {
                let mut key = String::from(c);
                while let Some(c) = chars.peek().filter(|c| c.is_ascii_alphanumeric() || *c == '-') {
                    key.push(c);
                    chars.next();
                }
                while matches!(chars.peek(), Some(' ' | '\t')) {
                    chars.next();
                }
                let value = match chars.next() {
                    None | Some('\n') => None,
                    Some('=') => Some(value(&mut chars)?),
                    Some(_) => return Err("config lines are `key = value`"),
                };
                if in_origin && key.eq_ignore_ascii_case("url") {
                    match value.ok_or("remote.origin.url has a value")? {
                        v if v.is_empty() => url = None,
                        v => url = url.or(Some(v)),
                    }
                }
            }
            _ => return Err("config lines are sections, `key = value` or comments"),
        }
    }
}

/// After `[`: reads the header through `]` and tells whether it opens `[remote "origin"]`.
fn section_header(chars: &mut Chars) -> std::result::Result<bool, &'static str> {
    const BAD: &str = "section headers are [name] or [name \"subsection\"]";
    let mut name = String::new();
    loop {
        match chars.next().ok_or(BAD)? {
            ']' => {
                // `[remote.origin]`: the old form, subsection lowercased.
                return Ok(match name.split_once('.') {
                    Some((section, sub)) => {
                        section.eq_ignore_ascii_case("remote") && sub.eq_ignore_ascii_case("origin")
                    }
                    None => false,
                });
            }
            ' ' | '\t' => break,
            c if c.is_ascii_alphanumeric() || c == '-' || c == '.' => name.push(c),
            _ => return Err(BAD),
        }
    }
    while matches!(chars.peek(), Some(' ' | '\t')) {
        chars.next();
    }
    if chars.next() != Some('"') {
        return Err(BAD);
    }
    let mut sub = String::new();
    loop {
        match chars.next().ok_or(BAD)? {
            '"' => break,
            '\n' => return Err(BAD),
            '\\' => sub.push(chars.next().filter(|c| *c != '\n').ok_or(BAD)?),
            c => sub.push(c),
        }
    }
    if chars.next() != Some(']') {
        return Err(BAD);
    }
    // The quoted subsection is case-sensitive; the section name is not.
    Ok(name.eq_ignore_ascii_case("remote") && sub == "origin")
}

/// After `=`: a value through the end of its line, as git's `parse_value` reads it.
fn value(chars: &mut Chars) -> std::result::Result<String, &'static str> {
    let mut out = String::new();
    let (mut quoted, mut comment, mut spaces) = (false, false, 0);
    loop {
        let c = match chars.next() {
            None | Some('\n') if quoted => return Err("a quoted value ends on its line"),
            None | Some('\n') => return Ok(out),
            Some(c) => c,
        };
        if comment {
            continue;
        }
        if c.is_whitespace() && !quoted {
            // Inner whitespace becomes spaces; leading and trailing whitespace goes.
            if !out.is_empty() {
                spaces += 1;
            }
            continue;
        }
        if !quoted && (c == '#' || c == ';') {
            comment = true;
            continue;
        }
        out.extend(std::iter::repeat_n(' ', spaces));
        spaces = 0;
        match c {
            '\\' => match chars.next() {
                Some('\n') => {}
                Some('t') => out.push('\t'),
                Some('b') => out.push('\u{8}'),
                Some('n') => out.push('\n'),
                Some(c @ ('\\' | '"')) => out.push(c),
                _ => return Err("a value has an unknown \\ escape"),
            },
            '"' => quoted = !quoted,
            c => out.push(c),
        }
    }
}

/// Characters of config text with `\r\n` read as `\n`, and one character of lookahead.
struct Chars<'a> {
    inner: std::iter::Peekable<std::str::Chars<'a>>,
}

impl<'a> Chars<'a> {
    fn new(text: &'a str) -> Chars<'a> {
        Chars { inner: text.chars().peekable() }
    }

    fn next(&mut self) -> Option<char> {
        match self.inner.next() {
            Some('\r') if self.inner.peek() == Some(&'\n') => self.inner.next(),
            other => other,
        }
    }

    fn peek(&mut self) -> Option<char> {
        self.inner.peek().copied()
    }

    fn skip_line(&mut self) {
        while !matches!(self.next(), None | Some('\n')) {}
    }
}
