//! Reading `.dockerignore` and deciding which context paths Docker would leave out.
//!
//! Docker (moby/patternmatcher behind `docker build`) cleans each line like Go's `filepath.Clean`,
//! checks it with `filepath.Match`, then translates it into a regular expression in which `*` and
//! `?` stay inside one path segment and `**` spans any number of segments; a path is out when the
//! last pattern matching it or one of its parent directories is not a `!` exception. Rather than
//! pull in a regex engine, each pattern is compiled here into a tiny Thompson automaton (one-char,
//! repeat and fork nodes) simulated over the path's characters, so a match costs one pass over the
//! path with no backtracking blow-up, and a pattern's literal head rejects most paths before the
//! automaton runs. The same automaton answers `may_include_under`: feed it `dir/` and see whether
//! a state that still wants input survives, which is exact for the patterns people write
//! (`!foo/keep.txt`, `!**/*.md`, `!*.md`) and errs towards descending otherwise. Moby's quirks that
//! follow from its translation are kept (`**foo` is a plain suffix test, `foo/**` does not match
//! `foo` itself, `a**b` needs `ab` or a `/` before the `b`); the places where its regexp syntax
//! leaks through are not: an escape always means the literal character and a class is read as
//! `filepath.Match` reads it (moby would take `\d` as a digit class and `[*]` as something else),
//! `^` outside a class is literal, and a reversed range such as `[z-a]`, which makes moby fail the
//! build when the pattern is first used, is rejected as soon as the file is parsed.

use std::fs;
use std::io;
use std::path::Path;

use crate::error::{Error, Result};

/// Parsed `.dockerignore`: its patterns in file order.
#[derive(Debug, Default, Clone)]
pub struct Ignore {
    rules: Vec<Rule>,
}

/// One pattern line.
#[derive(Debug, Clone)]
struct Rule {
    /// A `!` line: a match re-includes the path.
    exception: bool,
    pattern: Pattern,
}

/// A compiled pattern: automaton nodes, accepting once the position is `nodes.len()`.
#[derive(Debug, Clone)]
struct Pattern {
    nodes: Vec<Node>,
    /// The literal characters every match starts with, to reject most paths cheaply.
    head: String,
    /// The pattern is `head` and nothing else.
    literal: bool,
}

#[derive(Debug, Clone)]
enum Node {
    /// Consumes one character from the set, then moves on.
    One(CharSet),
    /// Consumes any number of characters from the set, including none.
    Many(CharSet),
    /// Consumes nothing and continues both at the next node and at the given one.
    Fork(usize),
}

#[derive(Debug, Clone)]
enum CharSet {
    Exactly(char),
    NotSlash,
    Any,
    Class { negated: bool, ranges: Vec<(char, char)> },
}

impl CharSet {
    fn contains(&self, c: char) -> bool {
        match self {
            CharSet::Exactly(x) => *x == c,
            CharSet::NotSlash => c != '/',
            CharSet::Any => true,
            CharSet::Class { negated, ranges } => ranges.iter().any(|&(lo, hi)| lo <= c && c <= hi) != *negated,
        }
    }
}

impl Ignore {
    /// An `Ignore` that excludes nothing.
    pub fn empty() -> Ignore {
        Ignore::default()
    }

    /// Parses the text of a `.dockerignore`; `file_label` names it in error messages
    /// (e.g. "ctx/.dockerignore").
    pub fn parse(text: &str, file_label: &str) -> Result<Ignore> {
        let text = text.strip_prefix('\u{feff}').unwrap_or(text);
        let mut rules = Vec::new();
        for (index, line) in text.lines().enumerate() {
            // Only a `#` in the very first column starts a comment, as in Docker.
            if line.starts_with('#') {
                continue;
            }
            let line = line.trim();
            if line.is_empty() {
                continue;
            }
            let rule = parse_line(line).map_err(|message| Error::Ignore {
                file: file_label.to_string(),
                line: index + 1,
                message,
            })?;
            rules.extend(rule);
        }
        Ok(Ignore { rules })
    }

    /// Reads CONTEXT/.dockerignore; a missing file gives an empty Ignore.
    pub fn load(context: &Path) -> Result<Ignore> {
        let path = context.join(".dockerignore");
        match fs::read(&path) {
            Ok(bytes) => Ignore::parse(&String::from_utf8_lossy(&bytes), &path.display().to_string()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(Ignore::empty()),
            Err(e) => Err(Error::io(&path, "read", e)),
        }
    }

    /// rel: '/'-separated path relative to the context root, no leading "./" or "/". True if
    /// Docker would exclude it.
    pub fn excluded(&self, rel: &str) -> bool {
        if rel.is_empty() || rel == "." {
            return false;
        }
        self.rules
            .iter()
            .rev()
            .find(|rule| rule.pattern.matches_self_or_parent(rel))
            .is_some_and(|rule| !rule.exception)
    }

    /// For an excluded directory `dir_rel`: true if some exception (`!`) pattern could re-include
    /// a path under it, so the walker must still descend into it (Docker's behaviour). For a
    /// directory that is not excluded the answer is true: its contents are wanted anyway.
    pub fn may_include_under(&self, dir_rel: &str) -> bool {
        let dir = dir_rel.trim_end_matches('/');
        // The last rule matching the directory also matches everything beneath it (through the
        // parent check), so only later rules can decide a descendant's fate differently.
        let decided_by = self.rules.iter().rposition(|rule| rule.pattern.matches_self_or_parent(dir));
        let later = match decided_by {
            Some(i) if !self.rules[i].exception => &self.rules[i + 1..],
            _ => return true,
        };
        let below = format!("{dir}/");
        later.iter().any(|rule| rule.exception && rule.pattern.may_match_extension_of(&below))
    }
}

/// Turns one trimmed, non-comment line into a rule, or `None` for a line that can match nothing.
/// The error is the message for the user.
fn parse_line(line: &str) -> std::result::Result<Option<Rule>, String> {
    let invalid = |why: &str| format!("invalid pattern \"{line}\": {why}");
    // Docker's file reader: split off `!`, clean the rest, make it relative to the context root.
    let (bang, rest) = match line.strip_prefix('!') {
        Some(rest) => (true, rest.trim()),
        None => (false, line),
    };
    let mut rest = if rest.is_empty() { String::new() } else { clean(rest) };
    if rest.len() > 1 && rest.starts_with('/') {
        rest.remove(0);
    }
    // patternmatcher then trims and cleans again with the `!` put back, which is why `!/` ends up
    // as a bare `!`, before taking the `!` off for good.
    let joined = if bang { format!("!{rest}") } else { rest };
    let joined = joined.trim();
    if joined.is_empty() {
        return Ok(None);
    }
    let cleaned = clean(joined);
    let (exception, text) = match cleaned.strip_prefix('!') {
        Some("") => return Err(invalid("'!' must be followed by the path to re-include")),
        Some(text) => (true, text),
        None => (false, cleaned.as_str()),
    };
    let pattern = Pattern::compile(text).map_err(|why| invalid(&why))?;
    // `.` would only match the context root, which Docker never excludes.
    if text == "." {
        return Ok(None);
    }
    Ok(Some(Rule { exception, pattern }))
}

/// Go's `filepath.Clean` for '/'-separated paths.
fn clean(path: &str) -> String {
    let rooted = path.starts_with('/');
    let mut parts: Vec<&str> = Vec::new();
    for segment in path.split('/') {
        match segment {
            "" | "." => {}
            ".." => {
                if parts.last().is_some_and(|last| *last != "..") {
                    parts.pop();
                } else if !rooted {
                    parts.push("..");
                }
            }
            _ => parts.push(segment),
        }
    }
    let body = parts.join("/");
    if rooted {
        format!("/{body}")
    } else if body.is_empty() {
        ".".to_string()
    } else {
        body
    }
}

const UNTERMINATED: &str = "unterminated character class";
const BAD_DASH: &str = "a '-' in a character class must sit between two characters (write '\\-' for a literal '-')";
const EMPTY_CLASS: &str = "a character class cannot be empty or start with ']' (write '\\]' for a literal ']')";

impl Pattern {
    /// Compiles a cleaned pattern, rejecting what `filepath.Match` rejects and reversed ranges.
    fn compile(text: &str) -> std::result::Result<Pattern, String> {
        let chars: Vec<char> = text.chars().collect();
        let mut nodes = Vec::new();
        let mut i = 0;
        while i < chars.len() {
            match chars[i] {
                '*' if chars.get(i + 1) == Some(&'*') => {
                    // `**/` counts as `**`; at the end it takes everything, elsewhere it is
                    // `(.*/)?`: nothing, or anything that ends with a slash.
                    i += 2;
                    if chars.get(i) == Some(&'/') {
                        i += 1;
                    }
                    if i == chars.len() {
                        nodes.push(Node::Many(CharSet::Any));
                    } else {
                        nodes.push(Node::Fork(nodes.len() + 3));
                        nodes.push(Node::Many(CharSet::Any));
                        nodes.push(Node::One(CharSet::Exactly('/')));
                    }
                    continue;
                }
                '*' => nodes.push(Node::Many(CharSet::NotSlash)),
                '?' => nodes.push(Node::One(CharSet::NotSlash)),
                '\\' => {
                    i += 1;
                    let Some(&c) = chars.get(i) else {
                        return Err("a trailing '\\' escapes nothing (write '\\\\' for a literal '\\')".into());
                    };
                    nodes.push(Node::One(CharSet::Exactly(c)));
                }
                '[' => {
                    let (set, next) = parse_class(&chars, i + 1)?;
                    nodes.push(Node::One(set));
                    i = next;
                    continue;
                }
                c => nodes.push(Node::One(CharSet::Exactly(c))),
            }
            i += 1;
        }
        // Moby tests a leading `**` followed by plain text as a bare string suffix, so `**foo`
        // matches `barfoo` although `**foo*` does not match `barfoox`. With a slash after the `**`
        // the suffix test and the general translation agree.
        if let Some(rest) = text.strip_prefix("**")
            && !rest.is_empty()
            && !rest.starts_with('/')
            && !rest.contains(['*', '?', '[', ']', '\\'])
        {
            nodes = std::iter::once(Node::Many(CharSet::Any))
                .chain(rest.chars().map(|c| Node::One(CharSet::Exactly(c))))
                .collect();
        }
        let head: String = nodes
            .iter()
            .map_while(|node| match node {
                Node::One(CharSet::Exactly(c)) => Some(*c),
                _ => None,
            })
            .collect();
        let literal = head.chars().count() == nodes.len();
        Ok(Pattern { nodes, head, literal })
    }

    fn matches(&self, path: &str) -> bool {
        if !path.starts_with(&self.head) {
            return false;
        }
        if self.literal {
            return path.len() == self.head.len();
        }
        self.run(path)[self.nodes.len()]
    }

    /// Docker's MatchesOrParentMatches for one pattern: the path or any of its parent directories.
    fn matches_self_or_parent(&self, rel: &str) -> bool {
        self.matches(rel) || rel.match_indices('/').any(|(i, _)| self.matches(&rel[..i]))
    }

    /// Whether some non-empty continuation of `prefix` could still match.
    fn may_match_extension_of(&self, prefix: &str) -> bool {
        if !(prefix.starts_with(&self.head) || self.head.starts_with(prefix)) {
            return false;
        }
        let live = self.run(prefix);
        self.nodes.iter().zip(&live).any(|(node, &on)| on && !matches!(node, Node::Fork(_)))
    }

    /// The automaton's live positions after reading `input` from the start.
    fn run(&self, input: &str) -> Vec<bool> {
        let n = self.nodes.len();
        let mut current = vec![false; n + 1];
        let mut next = vec![false; n + 1];
        let mut stack = Vec::new();
        self.enter(0, &mut current, &mut stack);
        for c in input.chars() {
            next.fill(false);
            let mut alive = false;
            for (i, node) in self.nodes.iter().enumerate() {
                if !current[i] {
                    continue;
                }
                let to = match node {
                    Node::One(set) if set.contains(c) => i + 1,
                    Node::Many(set) if set.contains(c) => i,
                    _ => continue,
                };
                self.enter(to, &mut next, &mut stack);
                alive = true;
            }
            std::mem::swap(&mut current, &mut next);
            if !alive {
                break;
            }
        }
        current
    }

    /// Marks position `i` live, with everything reachable from it without reading a character.
    fn enter(&self, i: usize, live: &mut [bool], stack: &mut Vec<usize>) {
        stack.push(i);
        while let Some(i) = stack.pop() {
            if live[i] {
                continue;
            }
            live[i] = true;
            match self.nodes.get(i) {
                Some(Node::Many(_)) => stack.push(i + 1),
                Some(Node::Fork(to)) => stack.extend([i + 1, *to]),
                _ => {}
            }
        }
    }
}

/// Parses a class body starting just after `[`, as `filepath.Match` does: `^` negates (`!` is
/// literal), `]` closes unless first, `\` escapes, ranges are `lo-hi`. Returns the set and the
/// index after the closing `]`.
fn parse_class(chars: &[char], mut i: usize) -> std::result::Result<(CharSet, usize), String> {
    let negated = chars.get(i) == Some(&'^');
    if negated {
        i += 1;
    }
    let mut ranges = Vec::new();
    loop {
        if chars.get(i) == Some(&']') && !ranges.is_empty() {
            return Ok((CharSet::Class { negated, ranges }, i + 1));
        }
        let (lo, next) = class_char(chars, i, false)?;
        i = next;
        let mut hi = lo;
        if chars.get(i) == Some(&'-') {
            (hi, i) = class_char(chars, i + 1, true)?;
            if hi < lo {
                return Err(format!("character class range {lo}-{hi} is reversed (write {hi}-{lo})"));
            }
        }
        ranges.push((lo, hi));
    }
}

/// One (possibly escaped) class character at `i`; something must follow it, at least the `]`.
fn class_char(chars: &[char], i: usize, after_dash: bool) -> std::result::Result<(char, usize), String> {
    let (c, next) = match chars.get(i) {
        None => return Err(UNTERMINATED.into()),
        Some('-') => return Err(BAD_DASH.into()),
        Some(']') => return Err(if after_dash { BAD_DASH } else { EMPTY_CLASS }.into()),
        Some('\\') => match chars.get(i + 1) {
            Some(&c) => (c, i + 2),
            None => return Err(UNTERMINATED.into()),
        },
        Some(&c) => (c, i + 1),
    };
    if next >= chars.len() {
        return Err(UNTERMINATED.into());
    }
    Ok((c, next))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Ignore {
        match Ignore::parse(text, "ctx/.dockerignore") {
            Ok(ignore) => ignore,
            Err(e) => panic!("{text:?} should parse: {e}"),
        }
    }

    /// (.dockerignore text, path, excluded?) — from Docker's documentation and moby's tests.
    const EXCLUDED: &[(&str, &str, bool)] = &[
        // Plain names and `*`: top level only, parents carry their children, dot-files are plain.
        ("*", "Dockerfile", true),
        ("*", ".git", true),
        ("*", "a/b/c", true),
        ("*.go", "main.go", true),
        ("*.go", "cmd/main.go", false),
        ("*/*.go", "cmd/main.go", true),
        ("*c", "abc", true),
        ("*x", "xxx", true),
        ("a*b*c*d*e*/f", "axbxcxdxexxx/f", true),
        ("a*b*c*d*e*/f", "axbxcxdxe/xxx/f", false),
        ("a*b?c*x", "abxbbxdbxebxczzx", true),
        ("a*b?c*x", "abxbbxdbxebxczzy", false),
        ("foo", "foo/bar/baz", true),
        ("foo", "a/foo", false),
        ("foo", "foobar", false),
        ("foo/bar", "foo/bar/x", true),
        ("a/b", "a/bc", false),
        ("a*", "ab/c", true),
        ("a*/b", "a/c/b", false),
        ("*/tmp/*", "x/tmp/Dockerfile", true),
        ("*/tmp/*", "tmp/Dockerfile", false),
        ("", "x", false),
        ("x", "", false),
        // Comments, BOM, whitespace, line endings.
        ("# foo", "# foo", false),
        (" # foo", "# foo", true),
        ("foo # bar", "foo # bar", true),
        ("\u{feff}foo", "foo", true),
        ("\u{feff}#foo\nbar", "#foo", false),
        ("\u{feff}#foo\nbar", "bar", true),
        ("  foo \t", "foo", true),
        ("foo\r\nbar\r\n", "bar", true),
        ("\n\n   \nfoo", "foo", true),
        ("\\#foo", "#foo", true),
        // Exceptions: the last matching line wins.
        ("*.md\n!README.md", "README.md", false),
        ("*.md\n!README.md", "CHANGES.md", true),
        ("!README.md\n*.md", "README.md", true),
        ("*\n!  keep  ", "keep", false),
        ("*\n!keep\nkeep", "keep", true),
        ("*\n!!bang", "!bang", false),
        ("*\n!!bang", "bang", true),
        ("docs\n!docs/README.md", "docs/README.md", false),
        ("docs\n!docs/README.md", "docs/other.md", true),
        ("docs/\n!docs/README.md", "docs/README.md", false),
        ("docs/*\n!docs/README.md", "docs/README.md", false),
        ("**\n!util/docker/web", "util/docker/web/foo", false),
        ("**\n!util/docker/web\nutil/docker/web/foo", "util/docker/web/foo", true),
        ("**\n!dist/*.whl", "dist/x-1.0+g08-py3-none-any.whl", false),
        // `**` in every position.
        ("**", "anything/at/all", true),
        ("**/", "file", true),
        ("**/**", "dir/file", true),
        ("**/foo", "foo", true),
        ("**/foo", "a/b/foo", true),
        ("**/foo", "a/b/foo/c", true),
        ("**/foo", "a/barfoo", false),
        ("**foo", "a/barfoo", true),
        ("**foo*", "barfoox", false),
        ("**foo*", "x/foox", true),
        ("**/foo/bar", "foo/bar", true),
        ("**/foo/bar", "dir/dir2/foo/bar", true),
        ("foo/**", "foo", false),
        ("foo/**", "foo/a/b", true),
        ("foo/**/", "foo/a", true),
        ("foo**", "foobar", true),
        ("a/**/b", "a/b", true),
        ("a/**/b", "a/x/y/b", true),
        ("a/**/b", "a/xb", false),
        ("a**b", "ab", true),
        ("a**b", "ax/b", true),
        ("a**b", "axb", false),
        ("**/*.md", "README.md", true),
        ("**/*.md", "docs/deep/x.md", true),
        ("**/*.md", "docs/deep/x.mdx", false),
        ("**/dir2/*", "dir/dir2/file", true),
        ("**/dir2/**", "dir/dir2/dir3/file", true),
        ("a**/*.txt", "a/dir/dir/file.txt", true),
        ("a/*.txt**", "a/file.txt", true),
        ("**/**/*.txt", "file.txt", true),
        ("**/**/*.txt2", "dir/dir/file.txt", false),
        ("**/.foo", ".foo", true),
        ("**/.foo", "bar.foo", false),
        // `?`.
        ("abc?def", "abcZdef", true),
        ("abc?def", "abcdef", false),
        ("a?b", "a/b", false),
        ("a?b", "a☺b", true),
        ("a???b", "a☺b", false),
        // Classes, ranges, negation (`^`; `!` is a plain character), escapes inside.
        ("a[b-d]e", "ace", true),
        ("a[b-d]e", "aae", false),
        ("a[b-d]e", "ae", false),
        ("a[^b-d]e", "aze", true),
        ("a[^b-d]e", "ace", false),
        ("a[!b]e", "a!e", true),
        ("a[!b]e", "aze", false),
        ("ab[c]", "abc", true),
        ("a[^a]b", "a☺b", true),
        ("[\\]a]", "]", true),
        ("[x\\-]", "-", true),
        ("[x\\-]", "z", false),
        ("[\\-x]", "x", true),
        ("[a-ζ]*", "α", true),
        ("*[a-ζ]", "A", false),
        ("[*]", "*", true),
        ("x]", "x]", true),
        // Escapes and characters that are special only to regular expressions.
        ("a\\*b", "a*b", true),
        ("a\\*b", "axb", false),
        ("a\\\\", "a\\", true),
        ("abc.def", "abcdef", false),
        ("abc.def", "abc.def", true),
        (".*", ".foo", true),
        (".*", "foo", false),
        ("a(b)c/def", "a(b)c/def", true),
        ("a(b)c/def", "a(b)c/xyz", false),
        ("a.|)$(}+{bc", "a.|)$(}+{bc", true),
        ("dist/*.whl", "dist/proxy.py-2.4.0rc3.dev36+g08acad9-py3-none-any.whl", true),
        // Cleaning: leading `/` and `./`, `..`, doubled and trailing slashes; `.` is ignored.
        ("/foo", "foo", true),
        ("./foo", "foo", true),
        ("/a/file/here", "a/file/here", true),
        ("foo/../bar", "bar", true),
        ("foo/../bar", "foo", false),
        ("a//b", "a/b", true),
        ("a/./b/", "a/b", true),
        ("*\n! /keep", "keep", false),
        (".", "x", false),
        ("./", "x", false),
        ("a/..", "a", false),
        ("*\n!.", "x", true),
        ("/", "x", false),
        ("..", "x", false),
        ("../x", "x", false),
        ("/../x", "x", true),
    ];

    #[test]
    fn excluded_table() {
        let mut failures = Vec::new();
        for &(text, path, want) in EXCLUDED {
            if parse(text).excluded(path) != want {
                failures.push(format!("{text:?} on {path:?}: want excluded={want}"));
            }
        }
        assert!(failures.is_empty(), "{} failures:\n{}", failures.len(), failures.join("\n"));
    }

    /// (.dockerignore text, line number, text the message must contain).
    const INVALID: &[(&str, usize, &str)] = &[
        ("[", 1, "invalid pattern \"[\": unterminated character class"),
        ("ok\n# comment\n\n[a-", 4, "invalid pattern \"[a-\": unterminated character class"),
        ("\u{feff}a[", 1, "unterminated"),
        ("[^", 1, "unterminated"),
        ("[^bc", 1, "unterminated"),
        ("[\\", 1, "unterminated"),
        ("[a", 1, "unterminated"),
        ("!", 1, "invalid pattern \"!\": '!' must be followed"),
        ("ok\n  !  ", 2, "'!' must be followed"),
        ("!/", 1, "'!' must be followed"),
        ("foo\\", 1, "trailing '\\'"),
        ("[]a]", 1, "cannot be empty"),
        ("[^]", 1, "cannot be empty"),
        ("[-x]", 1, "'-'"),
        ("[x-]", 1, "'-'"),
        ("[a-b-c]", 1, "'-'"),
        ("x\n[z-a]", 2, "range z-a is reversed"),
        ("[Local-Only]/", 1, "range l-O is reversed"),
        ("a\n!foo[", 2, "invalid pattern \"!foo[\""),
    ];

    #[test]
    fn invalid_patterns_name_their_line() {
        for &(text, want_line, want_message) in INVALID {
            match Ignore::parse(text, "ctx/.dockerignore") {
                Err(Error::Ignore { file, line, message }) => {
                    assert_eq!(file, "ctx/.dockerignore");
                    assert_eq!(line, want_line, "{text:?}: {message}");
                    assert!(message.contains(want_message), "{text:?}: {message}");
                }
                other => panic!("{text:?} should be rejected, got {other:?}"),
            }
        }
    }

    #[test]
    fn error_display_points_at_the_line() {
        let err = Ignore::parse("ok\n[a-", "ctx/.dockerignore").err().map(|e| e.to_string());
        assert_eq!(err.as_deref(), Some("ctx/.dockerignore:2: invalid pattern \"[a-\": unterminated character class"));
    }

    /// (.dockerignore text, excluded directory, may an exception re-include something below?).
    const MAY_INCLUDE: &[(&str, &str, bool)] = &[
        ("foo\n!foo/keep.txt", "foo", true),
        ("foo\nbar\n!foo/keep.txt", "bar", false),
        ("*\n!**/*.md", "foo", true),
        ("*\n!**/*.md", "a/b/c", true),
        ("*\n!*.md", "foo", false),
        ("foo", "foo", false),
        ("!foo/keep.txt\nfoo", "foo", false),
        ("foo\n!foo/*/keep", "foo", true),
        ("foo\n!foo/*/keep", "foo/a", true),
        ("foo\n!foo/*/keep", "foo/a/b", false),
        ("foo\n!foo/sub", "foo", true),
        ("foo\n!foo/sub", "foo/other", false),
        ("foo\n!foo/sub", "foo/sub2", false),
        ("foo\n!foo/sub/**", "foo/sub", true),
        ("**\n!**foo", "a", true),
        ("*\n![a-c]/x", "b", true),
        ("*\n![a-c]/x", "d", false),
        ("*\n!?/x", "b", true),
        ("*\n!?/x", "bb", false),
        ("node_modules\n!node_modules/pkg/dist/**", "node_modules/pkg", true),
        ("node_modules\n!node_modules/pkg/dist/**", "node_modules/other", false),
        ("docs\n!docs", "docs", true),
        ("a\n!a*", "a", true),
        ("", "a", true),
    ];

    #[test]
    fn may_include_under_table() {
        let mut failures = Vec::new();
        for &(text, dir, want) in MAY_INCLUDE {
            if parse(text).may_include_under(dir) != want {
                failures.push(format!("{text:?} under {dir:?}: want {want}"));
            }
        }
        assert!(failures.is_empty(), "{} failures:\n{}", failures.len(), failures.join("\n"));
    }

    #[test]
    fn clean_follows_go() {
        for (input, want) in [
            ("a//b", "a/b"),
            ("a/./b/", "a/b"),
            ("a/../..", ".."),
            ("../../x", "../../x"),
            ("/..", "/"),
            ("/../x/", "/x"),
            ("./", "."),
            ("*/..", "."),
        ] {
            assert_eq!(clean(input), want, "{input:?}");
        }
    }

    fn scratch_dir(name: &str) -> std::path::PathBuf {
        let dir = std::env::temp_dir().join(format!("idpb-ignore-{}-{name}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).expect("create scratch dir");
        dir
    }

    #[test]
    fn load_reads_the_context_file() {
        let dir = scratch_dir("load");
        assert!(!Ignore::load(&dir).expect("missing file is fine").excluded("anything"));

        fs::write(dir.join(".dockerignore"), "\u{feff}*.log\n!keep.log\n[oops").expect("write");
        match Ignore::load(&dir) {
            Err(Error::Ignore { file, line: 3, .. }) => {
                assert!(file.ends_with(".dockerignore"), "{file}")
            }
            other => panic!("expected a line-3 error, got {other:?}"),
        }

        fs::write(dir.join(".dockerignore"), "\u{feff}*.log\n!keep.log\n").expect("write");
        let ignore = Ignore::load(&dir).expect("valid file");
        assert!(ignore.excluded("debug.log"));
        assert!(!ignore.excluded("keep.log"));

        fs::remove_file(dir.join(".dockerignore")).expect("remove");
        fs::create_dir(dir.join(".dockerignore")).expect("mkdir");
        assert!(matches!(Ignore::load(&dir), Err(Error::Io { action: "read", .. })));
        let _ = fs::remove_dir_all(&dir);
    }

    #[test]
    fn empty_excludes_nothing() {
        let ignore = Ignore::empty();
        assert!(!ignore.excluded("a"));
        assert!(!ignore.excluded("a/b"));
        assert!(ignore.may_include_under("a"));
    }
}
