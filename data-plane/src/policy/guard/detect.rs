//! Built-in detectors of personal data and secrets. Each finds candidates with a regular
//! expression (compiled once, for the process) and confirms them where the data has a check:
//! Luhn for payment cards, mod-97 for IBANs, the issuing rules for US SSNs, a parse for IP
//! addresses, the E.164 length for phone numbers. A near miss (a 16-digit number that fails
//! Luhn) is not a match.
//!
//! For streams, each detector also knows which characters a match is made of and how long
//! one can be: a suffix of those characters is all that could still grow into a match, so
//! that is all a stream holds back (see `stream.rs`).

use std::sync::LazyLock;

use regex::{Regex, RegexSet};

/// Kinds of data a guardrail finds. The placeholder of `Redact` is `[NAME]`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Entity {
    Email,
    Phone,
    CreditCard,
    Ssn,
    Iban,
    IpAddress,
    Secret,
}

impl Entity {
    pub const ALL: [Entity; 7] = [
        Entity::Email,
        Entity::Phone,
        Entity::CreditCard,
        Entity::Ssn,
        Entity::Iban,
        Entity::IpAddress,
        Entity::Secret,
    ];

    /// The name in configs and metrics.
    pub fn name(self) -> &'static str {
        match self {
            Self::Email => "Email",
            Self::Phone => "Phone",
            Self::CreditCard => "CreditCard",
            Self::Ssn => "Ssn",
            Self::Iban => "Iban",
            Self::IpAddress => "IpAddress",
            Self::Secret => "Secret",
        }
    }

    pub fn from_name(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|e| e.name() == s)
    }

    /// What `Redact` puts in place of a match.
    pub fn placeholder(self) -> &'static str {
        match self {
            Self::Email => "[EMAIL]",
            Self::Phone => "[PHONE]",
            Self::CreditCard => "[CREDIT_CARD]",
            Self::Ssn => "[SSN]",
            Self::Iban => "[IBAN]",
            Self::IpAddress => "[IP_ADDRESS]",
            Self::Secret => "[SECRET]",
        }
    }

    /// Whether `c` can be part of a match (a stream holds back a suffix of these).
    pub fn continues(self, c: char) -> bool {
        match self {
            Self::Email => c.is_ascii_alphanumeric() || "._%+-@".contains(c),
            Self::Phone => c.is_ascii_digit() || " +().-".contains(c),
            Self::CreditCard => c.is_ascii_digit() || CARD_SEPARATORS.contains(c),
            Self::Ssn => c.is_ascii_digit() || c == ' ' || c == '-',
            Self::Iban => c.is_ascii_alphanumeric() || " .-".contains(c),
            Self::IpAddress => c.is_ascii_hexdigit() || c == '.' || c == ':',
            Self::Secret => c.is_ascii_alphanumeric() || "_-.".contains(c),
        }
    }

    /// Whether a match can start with `c` (a held suffix starts at one of these).
    pub fn starts(self, c: char) -> bool {
        match self {
            Self::Email | Self::Iban | Self::Secret => c.is_ascii_alphanumeric(),
            Self::Phone => c.is_ascii_digit() || c == '+' || c == '(',
            Self::CreditCard | Self::Ssn => c.is_ascii_digit(),
            Self::IpAddress => c.is_ascii_hexdigit() || c == ':',
        }
    }

    /// Whether `tail` (made of `continues` characters, starting with a `starts` one) could
    /// be the beginning of a match: checked where the alphabet alone would hold ordinary
    /// words back (IBANs begin with a country code and check digits, secrets with a known
    /// prefix).
    pub fn could_begin(self, tail: &str) -> bool {
        match self {
            // A first group of two digits or more, unless it may still grow into one.
            Self::Phone => {
                let digits = tail.bytes().take_while(u8::is_ascii_digit).count();
                tail.starts_with(['+', '(']) || digits == tail.len() || digits >= 2
            }
            Self::Iban => {
                let b = tail.as_bytes();
                b.iter().take(2).all(u8::is_ascii_uppercase)
                    && b.iter().skip(2).take(2).all(u8::is_ascii_digit)
            }
            // A stream holds a word only if it could be a secret: a distinctive prefix, or a
            // bare `sk-` (after a word boundary).
            Self::Secret => begins(&["sk-"], tail) || begins(DISTINCTIVE_PREFIXES, tail),
            _ => true,
        }
    }

    /// Whether a match can start after `prev` (the character before it, if any) with
    /// `tail` (what follows, made of `continues` characters): numbers must not continue a
    /// number, words must not continue a word (ASCII, as the patterns' boundaries), and a
    /// secret with a distinctive prefix starts anywhere.
    pub fn may_start(self, prev: Option<char>, tail: &str) -> bool {
        let word = prev.is_some_and(|c| c.is_ascii_alphanumeric() || c == '_');
        let digit = prev.is_some_and(|c| c.is_ascii_digit());
        match self {
            Self::CreditCard | Self::Ssn => !digit,
            Self::Phone | Self::IpAddress => true,
            Self::Email | Self::Iban => !word,
            Self::Secret => !word || begins(DISTINCTIVE_PREFIXES, tail),
        }
    }

    /// Which finding wins when two cover the same text: the more specific detector.
    fn priority(self) -> u8 {
        match self {
            Self::Secret => 0,
            Self::CreditCard => 1,
            Self::Iban => 2,
            Self::Ssn => 3,
            Self::Email => 4,
            Self::IpAddress => 5,
            Self::Phone => 6,
        }
    }

    /// The longest match, in bytes: a longer run of `continues` characters cannot be one
    /// match, so a stream holds no more than this. Every pattern but the secrets' is bounded
    /// and this is its longest match (a test checks it against the patterns). Secrets (keys,
    /// tokens, private-key blocks) have no length of their own: a candidate longer than this
    /// is [`Span::overlong`], and blocked on a whole text and on a stream alike.
    pub fn max_len(self) -> usize {
        match self {
            Self::Email => 409,
            Self::Phone => 36,
            Self::CreditCard => 55,
            Self::Ssn => 11,
            Self::Iban => 64,
            Self::IpAddress => 51,
            Self::Secret => SECRET_BOUND,
        }
    }
}

/// The most of a secret candidate (a key, a token, a private-key block) that is read as
/// one: past it a value's end cannot be waited for, so it is blocked, whole or streamed.
pub(crate) const SECRET_BOUND: usize = 16 * 1024;

/// One finding: a byte range of the text.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Span {
    pub start: usize,
    pub end: usize,
    pub entity: Entity,
    /// A secret candidate longer than [`SECRET_BOUND`]: where it ends cannot be known on a
    /// stream, so it is blocked (unless its action is only `Alert`).
    pub overlong: bool,
}

fn re(pattern: &str) -> Regex {
    // The patterns are constants, checked by the tests.
    Regex::new(pattern).unwrap_or_else(|e| unreachable!("built-in pattern {pattern}: {e}"))
}

// The candidate patterns. Word boundaries are ASCII (`(?-u:\b)`): every match is ASCII, and
// the regex engine's fast paths stay on whatever the text around it.
const EMAIL_RE: &str = r"(?-u:\b)[a-zA-Z0-9](?:[a-zA-Z0-9._%+-]{0,63})@[a-zA-Z0-9](?:[a-zA-Z0-9-]{0,62})(?:\.[a-zA-Z0-9-]{1,63}){0,4}\.[a-zA-Z]{2,24}(?-u:\b)";
const PHONE_RE: &str =
    r"(?:\+[0-9]{1,3}[ .-]?)?(?:\([0-9]{1,4}\)[ .-]?)?[0-9]{2,4}(?:[ .-]?[0-9]{2,4}){1,4}(?-u:\b)";
// Cards and SSNs: numbers, bounded by what is not a digit (checked around each match: a
// letter before a card does not hide it).
const CARD_RE: &str = r"[0-9](?:[ \t\r\n./-]{0,2}[0-9]){12,18}";
const SSN_RE: &str = r"([0-9]{3})([- ])([0-9]{2})([- ])([0-9]{4})";
const IBAN_RE: &str = r"(?-u:\b)[A-Z]{2}[0-9]{2}(?:[ .-]?[A-Z0-9]){11,30}(?-u:\b)";
const IPV4_RE: &str = r"(?-u:\b)(?:[0-9]{1,3}\.){3}[0-9]{1,3}(?-u:\b)";
const IPV6_RE: &str = r"[0-9a-fA-F]{0,4}(?::[0-9a-fA-F]{0,4}){2,7}(?:\.[0-9]{1,3}){0,3}";
// Secrets with a distinctive prefix match wherever they start and whatever follows (a letter
// before or after does not hide one); a bare `sk-` key needs a word boundary before it, as
// `task-...` words are not keys.
const SECRETS_RE: &str = concat!(
    // AWS access key ids.
    r"(?:AKIA|ASIA|ABIA|ACCA)[0-9A-Z]{16}",
    // GitHub tokens (classic and fine-grained).
    r"|gh[pousr]_[A-Za-z0-9]{36,255}|github_pat_[A-Za-z0-9_]{22,255}",
    // Anthropic, then OpenAI keys.
    r"|sk-ant-[A-Za-z0-9_-]{20,}|sk-(?:proj|svcacct|admin)-[A-Za-z0-9_-]{20,}|(?-u:\b)sk-[A-Za-z0-9_-]{20,}",
    // Slack tokens.
    r"|xox[baprs]-[A-Za-z0-9-]{10,}",
    // Google API keys.
    r"|AIza[0-9A-Za-z_-]{35}",
    // JSON Web Tokens.
    r"|eyJ[A-Za-z0-9_-]{5,}\.eyJ[A-Za-z0-9_-]{5,}\.[A-Za-z0-9_-]{10,}",
    // PEM private keys (to the end of the text when it is cut off before its END line).
    r"|-----BEGIN (?:[A-Z]+ )*PRIVATE KEY-----[\s\S]*?(?:-----END (?:[A-Z]+ )*PRIVATE KEY-----|\z)",
);

/// What any match of each detector must contain, as small patterns in one set: one pass of
/// its DFA over a text says which detectors need to look closer (most texts have nothing,
/// and pay for that one pass only). The full patterns' long counted repetitions would make
/// that DFA large and slow; these stay small. In the order of the detectors below.
const PREFILTERS: [&str; 8] = [
    // Email: a word character on both sides of an `@`.
    r"[A-Za-z0-9._%+-]@[A-Za-z0-9]",
    // Phone: seven digits, separators between them.
    r"[0-9](?:[ .()+-]{0,2}[0-9]){6}",
    // Card: thirteen digits, up to two separators between them.
    r"[0-9](?:[ \t\r\n./-]{0,2}[0-9]){12}",
    // SSN.
    r"[0-9]{3}[- ][0-9]{2}[- ][0-9]{4}",
    // IBAN: country code and check digits.
    r"[A-Z]{2}[0-9]{2}",
    // IPv4.
    r"[0-9]\.[0-9]{1,3}\.[0-9]{1,3}\.[0-9]",
    // IPv6: two colons with hex digits or nothing between.
    r"[0-9A-Fa-f]{0,4}:[0-9A-Fa-f]{0,4}:",
    // Secrets: how they begin.
    r"AKIA|ASIA|ABIA|ACCA|gh[pousr]_|github_pat_|sk-|xox[baprs]-|AIza|eyJ|-----BEGIN ",
];
static SET: LazyLock<RegexSet> = LazyLock::new(|| {
    RegexSet::new(PREFILTERS).unwrap_or_else(|e| unreachable!("built-in prefilters: {e}"))
});
/// The full patterns, in the prefilters' order (tests).
#[cfg(test)]
const PATTERNS_FULL: [&str; 8] = [
    EMAIL_RE, PHONE_RE, CARD_RE, SSN_RE, IBAN_RE, IPV4_RE, IPV6_RE, SECRETS_RE,
];
static EMAIL: LazyLock<Regex> = LazyLock::new(|| re(EMAIL_RE));
static PHONE: LazyLock<Regex> = LazyLock::new(|| re(PHONE_RE));
static CARD: LazyLock<Regex> = LazyLock::new(|| re(CARD_RE));
static SSN: LazyLock<Regex> = LazyLock::new(|| re(SSN_RE));
static IBAN: LazyLock<Regex> = LazyLock::new(|| re(IBAN_RE));
static IPV4: LazyLock<Regex> = LazyLock::new(|| re(IPV4_RE));
static IPV6: LazyLock<Regex> = LazyLock::new(|| re(IPV6_RE));
static SECRETS: LazyLock<Regex> = LazyLock::new(|| re(SECRETS_RE));

/// Separators between a card's digits.
const CARD_SEPARATORS: &str = " \t\r\n./-";

/// Whether `tail` starts with one of `prefixes`, or is the start of one still arriving.
fn begins(prefixes: &[&str], tail: &str) -> bool {
    prefixes
        .iter()
        .any(|p| tail.starts_with(p) || p.starts_with(tail))
}

/// Prefixes distinctive enough to be a secret wherever they start (not a bare `sk-`).
const DISTINCTIVE_PREFIXES: &[&str] = &[
    "AKIA",
    "ASIA",
    "ABIA",
    "ACCA",
    "ghp_",
    "gho_",
    "ghu_",
    "ghs_",
    "ghr_",
    "github_pat_",
    "sk-ant-",
    "sk-proj-",
    "sk-svcacct-",
    "sk-admin-",
    "xoxb-",
    "xoxa-",
    "xoxp-",
    "xoxr-",
    "xoxs-",
    "AIza",
    "eyJ",
];

/// Where an unterminated private-key block begins (a stream holds from there): the last
/// `-----BEGIN ` with no END line after it, whose header is or may still become a private
/// key's.
pub(crate) fn open_key_block(text: &str) -> Option<usize> {
    let at = text.rfind(BEGIN)?;
    let rest = &text[at..];
    (!rest.contains("-----END ") && key_header(rest)).then_some(at)
}

const BEGIN: &str = "-----BEGIN ";

/// Whether `rest` (which starts with `-----BEGIN `) is a private key's header, or the start
/// of one that is still arriving.
fn key_header(rest: &str) -> bool {
    let after = &rest[BEGIN.len()..];
    let label = |l: &str| l.bytes().all(|b| b.is_ascii_uppercase() || b == b' ');
    match after.find("-----") {
        Some(n) => label(&after[..n]) && after[..n].ends_with("PRIVATE KEY"),
        None => after.len() <= 64 && label(after),
    }
}

/// Secret candidates longer than [`SECRET_BOUND`] that start at `from` or later: runs of
/// the characters a key or token is made of that begin as one does (a known prefix at a word
/// boundary) and go on past the bound, and private-key blocks open for longer than it. A
/// stream cannot hold such a value to its end, so it blocks at the bound; a whole text is
/// judged the same way (see [`Span::overlong`]).
fn overlong_candidates(text: &str, from: usize) -> Vec<Span> {
    let mut out = Vec::new();
    let b = text.as_bytes();
    let e = Entity::Secret;
    let mut i = from;
    while i < b.len() {
        if !e.continues(char::from(b[i])) || !b[i].is_ascii() {
            i += 1;
            continue;
        }
        let run_start = i;
        while i < b.len() && b[i].is_ascii() && e.continues(char::from(b[i])) {
            i += 1;
        }
        if i - run_start <= SECRET_BOUND {
            continue;
        }
        // The first place in the run where a secret can start.
        let first = (run_start..i).find(|&p| {
            let prev = text[..p].chars().next_back();
            e.starts(char::from(b[p]))
                && e.may_start(prev, &text[p..i])
                && e.could_begin(&text[p..i])
        });
        if let Some(p) = first.filter(|&p| i - p > SECRET_BOUND) {
            out.push(Span {
                start: p,
                end: i,
                entity: e,
                overlong: true,
            });
        }
    }
    // A private-key block with no END line within the bound. One pass from the back finds,
    // for every BEGIN, the next END (a text of BEGINs alone stays linear).
    let begins: Vec<usize> = text
        .get(from..)
        .map(|t| t.match_indices(BEGIN).map(|(i, _)| from + i).collect())
        .unwrap_or_default();
    let ends: Vec<usize> = text.match_indices("-----END ").map(|(i, _)| i).collect();
    for start in begins {
        let next_end = ends.partition_point(|&e| e < start);
        let end = ends.get(next_end).copied().unwrap_or(text.len());
        if end - start > SECRET_BOUND && key_header(&text[start..]) {
            out.push(Span {
                start,
                end: text.len().min(end.max(start + SECRET_BOUND + 1)),
                entity: e,
                overlong: true,
            });
        }
    }
    out
}

/// Luhn's check of a digit string.
fn luhn(digits: &[u8]) -> bool {
    let mut sum = 0u32;
    for (i, d) in digits.iter().rev().enumerate() {
        let mut v = u32::from(d - b'0');
        if !i.is_multiple_of(2) {
            v *= 2;
            if v > 9 {
                v -= 9;
            }
        }
        sum += v;
    }
    sum.is_multiple_of(10)
}

fn digits(s: &str) -> Vec<u8> {
    s.bytes().filter(u8::is_ascii_digit).collect()
}

fn card_ok(s: &str) -> bool {
    let d = digits(s);
    (13..=19).contains(&d.len()) && d[0] != b'0' && d.iter().any(|&c| c != d[0]) && luhn(&d)
}

/// Whether a number match stands alone: no digit right before or after it.
fn standalone(text: &str, m: &regex::Match<'_>) -> bool {
    let before = text[..m.start()].chars().next_back();
    let after = text[m.end()..].chars().next();
    !before.is_some_and(|c| c.is_ascii_digit()) && !after.is_some_and(|c| c.is_ascii_digit())
}

/// ISO 13616: move the first four characters to the end, letters to numbers, mod 97 = 1.
fn iban_ok(s: &str) -> bool {
    let compact: Vec<u8> = s
        .bytes()
        .filter(|b| !matches!(b, b' ' | b'.' | b'-'))
        .collect();
    if !(15..=34).contains(&compact.len()) {
        return false;
    }
    let mut rem = 0u32;
    for &b in compact[4..].iter().chain(&compact[..4]) {
        let v = match b {
            b'0'..=b'9' => u32::from(b - b'0'),
            b'A'..=b'Z' => u32::from(b - b'A') + 10,
            _ => return false,
        };
        rem = if v >= 10 {
            (rem * 100 + v) % 97
        } else {
            (rem * 10 + v) % 97
        };
    }
    rem == 1
}

/// SSA rules: no area 000, 666 or 900–999, no group 00, no serial 0000, one separator kind.
fn ssn_ok(c: &regex::Captures<'_>) -> bool {
    let area: u32 = c[1].parse().unwrap_or(0);
    c[2] == c[4] && area != 0 && area != 666 && area < 900 && &c[3] != "00" && &c[5] != "0000"
}

/// E.164 allows at most 15 digits; fewer than 7 is not a phone number. A bare run of digits
/// with no separator and no `+` is left to the other detectors (order numbers, amounts).
fn phone_ok(s: &str) -> bool {
    let n = digits(s).len();
    (7..=15).contains(&n) && (s.starts_with('+') || s.contains([' ', '-', '.', '(']))
}

/// A parse with a digit (`::` alone is punctuation more often than an address), and more
/// than a `d::f` in code can give: three colons, a leading `::`, or a group of three hex
/// digits or more.
fn ipv6_ok(s: &str) -> bool {
    let colons = s.matches(':').count();
    colons >= 2
        && s.bytes().any(|b| b.is_ascii_hexdigit())
        && (colons >= 3 || s.starts_with("::") || s.split(':').any(|g| g.len() >= 3))
        && s.parse::<std::net::Ipv6Addr>().is_ok()
}

/// Whether the prefilter pass found candidates of `entity`.
fn candidates(hits: &regex::SetMatches, entity: Entity) -> bool {
    match entity {
        Entity::Email => hits.matched(0),
        Entity::Phone => hits.matched(1),
        Entity::CreditCard => hits.matched(2),
        Entity::Ssn => hits.matched(3),
        Entity::Iban => hits.matched(4),
        Entity::IpAddress => hits.matched(5) || hits.matched(6),
        Entity::Secret => hits.matched(7),
    }
}

/// Every finding of `entities` in `text`, in order, overlaps resolved: the earlier start
/// wins, then the longer match, then the more specific detector.
pub(crate) fn find(text: &str, entities: &[Entity]) -> Vec<Span> {
    find_from(text, 0, entities)
}

/// Every match of `re` starting at `from` or later that `keep` accepts; what comes before
/// `from` is context (a word boundary at `from` is judged as in the whole text). After a
/// match `keep` refuses (a number failing its check), the search goes on from the next
/// character, not past the refused match: a valid value inside a longer invalid one is still
/// found, whichever position a search starts from (a stream starts where it last released).
fn each(re: &Regex, text: &str, from: usize, mut keep: impl FnMut(regex::Match<'_>) -> bool) {
    let mut at = from;
    while at <= text.len()
        && let Some(m) = re.find_at(text, at)
    {
        at = if keep(m) {
            m.end().max(m.start() + 1)
        } else {
            m.start() + 1
        };
        while at < text.len() && !text.is_char_boundary(at) {
            at += 1;
        }
    }
}

/// Texts shorter than this get a [`Glance`] before the prefilter pass: most texts a model
/// reads are short (object keys, roles, ids, numbers), and one pass of counting rules out
/// every detector for them at a fraction of a regex search's fixed cost.
const GLANCE_MAX: usize = 64;

/// What a short text holds, counted in one pass: enough to rule out detectors whose every
/// match needs more (see [`Entity::could_occur`]).
#[derive(Debug, Default)]
struct Glance {
    len: usize,
    digits: usize,
    at: bool,
    dots: usize,
    colons: usize,
}

impl Glance {
    fn of(text: &str) -> Self {
        let mut g = Self {
            len: text.len(),
            ..Self::default()
        };
        for b in text.bytes() {
            match b {
                b'0'..=b'9' => g.digits += 1,
                b'@' => g.at = true,
                b'.' => g.dots += 1,
                b':' => g.colons += 1,
                _ => {}
            }
        }
        g
    }
}

/// The shortest match of any secret pattern (`xox?-` and ten characters).
const SECRET_MIN: usize = 15;

impl Entity {
    /// Whether a text with this glance could hold a match: what every match of the
    /// detector contains (a unit test checks it against the detectors on random texts).
    fn could_occur(self, g: &Glance) -> bool {
        match self {
            // `a@b.cd`
            Self::Email => g.at && g.dots >= 1 && g.len >= 6,
            // Seven digits or more.
            Self::Phone => g.digits >= 7,
            Self::CreditCard => g.digits >= 13,
            Self::Ssn => g.digits >= 9,
            // Check digits, and fifteen characters or more.
            Self::Iban => g.digits >= 2 && g.len >= 15,
            // `1.1.1.1`, or two colons and a hex digit (`::1`).
            Self::IpAddress => (g.dots >= 3 && g.digits >= 4) || (g.colons >= 2 && g.len >= 3),
            Self::Secret => g.len >= SECRET_MIN,
        }
    }
}

/// [`find`] of what starts at `from` or later, the text before it read as context.
pub(crate) fn find_from(text: &str, from: usize, entities: &[Entity]) -> Vec<Span> {
    if entities.is_empty() || from >= text.len() {
        return Vec::new();
    }
    let rest = &text[from..];
    if rest.len() < GLANCE_MAX {
        let g = Glance::of(rest);
        if !entities.iter().any(|e| e.could_occur(&g)) {
            return Vec::new();
        }
    }
    find_searched(text, from, entities)
}

/// [`find_from`] without the glance: the prefilter pass, then the detectors it points to.
fn find_searched(text: &str, from: usize, entities: &[Entity]) -> Vec<Span> {
    let mut out = Vec::new();
    let hits = SET.matches_at(text, from);
    if !hits.matched_any() {
        return out;
    }
    for &entity in entities {
        if !candidates(&hits, entity) {
            continue;
        }
        // Pushes a match the check accepts.
        let mut push = |ok: bool, m: regex::Match<'_>| {
            if ok {
                out.push(Span {
                    start: m.start(),
                    end: m.end(),
                    entity,
                    overlong: entity == Entity::Secret && m.len() > SECRET_BOUND,
                });
            }
            ok
        };
        match entity {
            Entity::Email => each(&EMAIL, text, from, |m| push(true, m)),
            Entity::Phone => each(&PHONE, text, from, |m| push(phone_ok(m.as_str()), m)),
            Entity::CreditCard => each(&CARD, text, from, |m| {
                push(standalone(text, &m) && card_ok(m.as_str()), m)
            }),
            Entity::Ssn => each(&SSN, text, from, |m| {
                let ok =
                    standalone(text, &m) && SSN.captures(m.as_str()).is_some_and(|c| ssn_ok(&c));
                push(ok, m)
            }),
            Entity::Iban => each(&IBAN, text, from, |m| push(iban_ok(m.as_str()), m)),
            Entity::IpAddress => {
                each(&IPV4, text, from, |m| {
                    push(m.as_str().parse::<std::net::Ipv4Addr>().is_ok(), m)
                });
                each(&IPV6, text, from, |m| push(ipv6_ok(m.as_str()), m));
            }
            Entity::Secret => {
                each(&SECRETS, text, from, |m| push(true, m));
                out.extend(overlong_candidates(text, from));
            }
        }
    }
    out.sort_by(|a, b| {
        a.start
            .cmp(&b.start)
            .then(b.end.cmp(&a.end))
            .then(a.entity.priority().cmp(&b.entity.priority()))
    });
    let mut kept: Vec<Span> = Vec::with_capacity(out.len());
    for s in out {
        if kept.last().is_none_or(|k| s.start >= k.end) {
            kept.push(s);
        }
    }
    kept
}

#[cfg(test)]
mod tests {
    use super::*;

    fn found(text: &str, e: Entity) -> Vec<&str> {
        find(text, &[e])
            .into_iter()
            .map(|s| &text[s.start..s.end])
            .collect()
    }

    #[test]
    fn the_built_in_patterns_compile() {
        for e in Entity::ALL {
            let _ = find("", &[e]);
        }
    }

    #[test]
    fn emails() {
        assert_eq!(
            found("mail jane.doe+x@mail.example.co.uk now", Entity::Email),
            ["jane.doe+x@mail.example.co.uk"]
        );
        assert!(found("an @ sign, a@b, user@localhost", Entity::Email).is_empty());
    }

    #[test]
    fn cards_pass_luhn_and_near_misses_do_not() {
        assert_eq!(
            found("card 4111 1111 1111 1111 ok", Entity::CreditCard),
            ["4111 1111 1111 1111"]
        );
        assert_eq!(
            found("5500-0000-0000-0004", Entity::CreditCard),
            ["5500-0000-0000-0004"]
        );
        assert!(
            found("order 4111111111111112", Entity::CreditCard).is_empty(),
            "fails Luhn"
        );
        assert!(found("0000000000000000", Entity::CreditCard).is_empty());
        assert!(found("12345", Entity::CreditCard).is_empty());
    }

    #[test]
    fn ibans_pass_mod_97() {
        assert_eq!(
            found("pay GB82 WEST 1234 5698 7654 32 today", Entity::Iban),
            ["GB82 WEST 1234 5698 7654 32"]
        );
        assert_eq!(
            found("DE89370400440532013000", Entity::Iban),
            ["DE89370400440532013000"]
        );
        assert!(
            found("GB83WEST12345698765432", Entity::Iban).is_empty(),
            "bad check digits"
        );
    }

    #[test]
    fn ssns_follow_the_issuing_rules() {
        assert_eq!(found("ssn 123-45-6789.", Entity::Ssn), ["123-45-6789"]);
        assert!(found("000-12-3456 666-12-3456 912-12-3456", Entity::Ssn).is_empty());
        assert!(found("123-00-4567 123-45-0000 123-45 6789", Entity::Ssn).is_empty());
    }

    #[test]
    fn ip_addresses_parse() {
        assert_eq!(
            found(
                "from 192.168.1.20 and 2001:db8::8a2e:370:7334 at 12:30:45",
                Entity::IpAddress
            ),
            ["192.168.1.20", "2001:db8::8a2e:370:7334"]
        );
        assert!(found("version 1.2.3.4567 and 300.1.1.1", Entity::IpAddress).is_empty());
    }

    #[test]
    fn phones_in_international_formats() {
        assert_eq!(
            found("call +44 20 7946 0958 or (555) 123-4567", Entity::Phone),
            ["+44 20 7946 0958", "(555) 123-4567"]
        );
        assert!(found("in 2024 we sold 1234567 units", Entity::Phone).is_empty());
    }

    #[test]
    fn secrets() {
        let text = "aws AKIAIOSFODNN7EXAMPLE gh ghp_abcdefghijklmnopqrstuvwxyz0123456789 \
                    oa sk-proj-abcdefghijklmnopqrstuvwx an sk-ant-api03-abcdefghijklmnopqrstuvwx \
                    sl xoxb-1234567890-abcdef g AIzaSyA1234567890abcdefghijklmnopqrstuv \
                    jwt eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxIn0.abcdefghijklmnop";
        assert_eq!(
            found(text, Entity::Secret).len(),
            7,
            "{:?}",
            found(text, Entity::Secret)
        );
        let pem = "k -----BEGIN RSA PRIVATE KEY-----\nMIIB\n-----END RSA PRIVATE KEY----- done";
        assert_eq!(found(pem, Entity::Secret).len(), 1);
        assert!(found("sk-short and AKIA123", Entity::Secret).is_empty());
        assert_eq!(
            open_key_block("x -----BEGIN PRIVATE KEY-----\nMII"),
            Some(2)
        );
        assert_eq!(open_key_block(pem), None);
    }

    /// The longest match a stream holds is each pattern's own longest match: a longer
    /// match would be released in part before it was seen whole.
    #[test]
    fn max_len_is_each_patterns_longest_match() {
        let longest = |p: &str| {
            regex_syntax::parse(p)
                .expect("pattern")
                .properties()
                .maximum_len()
        };
        for (e, patterns) in [
            (Entity::Email, &[EMAIL_RE][..]),
            (Entity::Phone, &[PHONE_RE]),
            (Entity::CreditCard, &[CARD_RE]),
            (Entity::Ssn, &[SSN_RE]),
            (Entity::Iban, &[IBAN_RE]),
            (Entity::IpAddress, &[IPV4_RE, IPV6_RE]),
        ] {
            let max = patterns
                .iter()
                .map(|p| longest(p).expect("bounded"))
                .max()
                .unwrap_or(0);
            assert_eq!(e.max_len(), max, "{e:?}");
        }
        assert_eq!(
            longest(SECRETS_RE),
            None,
            "secrets are unbounded: see overlong"
        );
    }

    #[test]
    fn cards_with_any_common_separator_are_found() {
        for card in [
            "4111.1111.1111.1111",
            "4 1 1 1 1 1 1 1 1 1 1 1 1 1 1 1",
            "4111-1111-1111-1111",
            "4111111111111111",
        ] {
            assert_eq!(found(&format!("x {card} y"), Entity::CreditCard), [card]);
            assert!(card.chars().all(|c| Entity::CreditCard.continues(c)));
            assert!(card.len() <= Entity::CreditCard.max_len());
        }
    }

    #[test]
    fn secrets_past_the_bound_are_overlong() {
        let jwt = format!(
            "eyJhbGciOiJSUzI1NiJ9.eyJ{}.{}",
            "a".repeat(800),
            "b".repeat(40)
        );
        let s = find(&format!("token {jwt} end"), &[Entity::Secret]);
        assert_eq!(
            (s.len(), s[0].overlong),
            (1, false),
            "an 854-character JWT is one"
        );
        let long = format!("key sk-{} end", "x".repeat(SECRET_BOUND + 10));
        let s = find(&long, &[Entity::Secret]);
        assert!(s.iter().any(|s| s.overlong && s.start == 4), "{s:?}");
        // A run that cannot begin a secret is not one, however long.
        let plain = format!("x {} y", "a".repeat(SECRET_BOUND * 2));
        assert!(find(&plain, &[Entity::Secret]).is_empty());
        // An unterminated key block: to the end of the text, overlong past the bound.
        let cut = "k -----BEGIN PRIVATE KEY-----\nMIIEv";
        let s = find(cut, &[Entity::Secret]);
        assert_eq!((s.len(), s[0].start, s[0].end), (1, 2, cut.len()));
        let open = format!("-----BEGIN PRIVATE KEY-----\n{}", "A".repeat(SECRET_BOUND));
        assert!(find(&open, &[Entity::Secret]).iter().any(|s| s.overlong));
        let cert = format!(
            "-----BEGIN CERTIFICATE-----\n{}",
            "A\n".repeat(SECRET_BOUND)
        );
        assert!(
            find(&cert, &[Entity::Secret]).is_empty(),
            "certificates are public"
        );
    }

    /// The glance rules out only texts the detectors find nothing in: random short texts made
    /// of the pieces matches are made of, and the shortest match of each detector.
    #[test]
    fn a_glance_never_hides_a_match() {
        const PIECES: &[&str] = &[
            "a",
            "Z",
            "x",
            "0",
            "1",
            "4",
            "9",
            " ",
            "-",
            ".",
            ":",
            "@",
            "+",
            "(",
            ")",
            "_",
            "/",
            "GB82",
            "4111 ",
            "sk-",
            "AKIA",
            "xoxb-",
            "eyJ",
            "::",
            "ex.com",
            "-----BEGIN ",
        ];
        let shortest = [
            "a@b.cd",
            "555-1234",
            "4111111111111111",
            "123-45-6789",
            "GB82WEST1234567",
            "1.1.1.1",
            "::1",
            "xoxb-abcdefghij",
        ];
        let mut rng = fastrand::Rng::with_seed(5);
        let texts = (0..50_000)
            .map(|_| {
                (0..rng.usize(1..16))
                    .map(|_| PIECES[rng.usize(..PIECES.len())])
                    .collect::<String>()
            })
            .chain(shortest.iter().map(|s| (*s).to_owned()));
        let mut seen = 0;
        for text in texts {
            if text.len() >= GLANCE_MAX {
                continue;
            }
            for e in Entity::ALL {
                if !find_searched(&text, 0, &[e]).is_empty() {
                    seen += 1;
                    assert!(e.could_occur(&Glance::of(&text)), "{e:?} in {text:?}");
                }
            }
        }
        assert!(seen > 1000, "the texts hold matches ({seen})");
    }

    /// A prefilter that missed a match would hide it: every sample match must pass its own.
    #[test]
    fn prefilters_let_every_match_through() {
        let samples = [
            (0, "jane.doe+x@mail.example.co.uk"),
            (1, "+44 20 7946 0958"),
            (1, "(555) 123-4567"),
            (2, "4111 1111 1111 1111"),
            (2, "5500-0000-0000-0004"),
            (3, "123-45-6789"),
            (4, "GB82 WEST 1234 5698 7654 32"),
            (5, "10.0.0.1"),
            (6, "2001:db8::1"),
            (6, "::1"),
            (7, "sk-proj-abcdefghijklmnopqrstuvwx"),
            (
                7,
                "-----BEGIN RSA PRIVATE KEY-----\nx\n-----END RSA PRIVATE KEY-----",
            ),
        ];
        for (i, m) in samples {
            let full = re(PATTERNS_FULL[i]);
            assert!(full.is_match(m), "{m} is a match");
            assert!(SET.matches(m).matched(i), "the prefilter of {m}");
        }
    }

    #[test]
    fn overlaps_keep_the_earlier_longer_finding() {
        let spans = find(
            "card 4111 1111 1111 1111",
            &[Entity::Phone, Entity::CreditCard],
        );
        assert_eq!(spans.len(), 1);
        assert_eq!(spans[0].entity, Entity::CreditCard);
    }

    #[test]
    fn every_match_is_made_of_what_the_stream_holds() {
        let samples = [
            ("x jane@example.com y", Entity::Email),
            ("x +44 20 7946 0958 y", Entity::Phone),
            ("x 4111 1111 1111 1111 y", Entity::CreditCard),
            ("x 123-45-6789 y", Entity::Ssn),
            ("x GB82 WEST 1234 5698 7654 32 y", Entity::Iban),
            ("x 2001:db8::1 y", Entity::IpAddress),
            ("x sk-proj-abcdefghijklmnopqrstuvwx y", Entity::Secret),
        ];
        for (text, e) in samples {
            let s = find(text, &[e]);
            assert_eq!(s.len(), 1, "{text}");
            let m = &text[s[0].start..s[0].end];
            assert!(m.chars().all(|c| e.continues(c)), "{m}");
            assert!(m.chars().next().is_some_and(|c| e.starts(c)), "{m}");
            assert!(m.len() <= e.max_len(), "{m}");
            assert!(e.could_begin(m), "{m}");
            for i in 1..m.len() {
                assert!(e.could_begin(&m[..i]), "{e:?}: {}", &m[..i]);
            }
        }
    }
}
