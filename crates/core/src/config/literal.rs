//! Python literals as yacs reads them: `ast.literal_eval` for the types configurations use
//! (numbers, strings, booleans, `None`, lists, tuples and dicts), with anything else kept as the
//! original string. Used for `KEY VALUE` overrides and the string values of YAML files.

use figment::value::{Dict, Empty, Num, Tag, Value};

/// Parses a Python literal the way `ast.literal_eval` does for the types configs use; anything
/// that is not a literal stays the original string.
pub fn parse_literal(text: &str) -> Value {
    let mut p = LiteralParser {
        s: text.as_bytes(),
        i: 0,
    };
    match p.value() {
        Some(v) if p.at_end() => v,
        _ => Value::String(Tag::Default, text.to_string()),
    }
}

struct LiteralParser<'a> {
    s: &'a [u8],
    i: usize,
}

impl LiteralParser<'_> {
    fn ws(&mut self) {
        while self.i < self.s.len() && self.s[self.i].is_ascii_whitespace() {
            self.i += 1;
        }
    }

    fn at_end(&mut self) -> bool {
        self.ws();
        self.i == self.s.len()
    }

    fn peek(&mut self) -> Option<u8> {
        self.ws();
        self.s.get(self.i).copied()
    }

    fn value(&mut self) -> Option<Value> {
        match self.peek()? {
            b'[' => self.sequence(b'[', b']', false),
            b'(' => self.sequence(b'(', b')', true),
            b'{' => self.dict(),
            b'\'' | b'"' => self.string(),
            c if c.is_ascii_digit() || c == b'-' || c == b'+' || c == b'.' => self.number(),
            _ => self.word(),
        }
    }

    fn sequence(&mut self, open: u8, close: u8, tuple: bool) -> Option<Value> {
        debug_assert_eq!(self.s[self.i], open);
        self.i += 1;
        let mut items = Vec::new();
        let mut saw_comma = false;
        loop {
            if self.peek()? == close {
                self.i += 1;
                break;
            }
            items.push(self.value()?);
            match self.peek()? {
                b',' => {
                    self.i += 1;
                    saw_comma = true;
                }
                c if c == close => {
                    self.i += 1;
                    break;
                }
                _ => return None,
            }
        }
        // `(x)` is just a parenthesised x in Python; `(x,)` is a tuple.
        if tuple && items.len() == 1 && !saw_comma {
            return items.pop();
        }
        Some(Value::Array(Tag::Default, items))
    }

    fn dict(&mut self) -> Option<Value> {
        self.i += 1;
        let mut d = Dict::new();
        loop {
            if self.peek()? == b'}' {
                self.i += 1;
                break;
            }
            let key = match self.value()? {
                Value::String(_, s) => s,
                Value::Num(_, n) => n.to_i128()?.to_string(),
                _ => return None,
            };
            if self.peek()? != b':' {
                return None;
            }
            self.i += 1;
            let value = self.value()?;
            d.insert(key, value);
            match self.peek()? {
                b',' => self.i += 1,
                b'}' => {
                    self.i += 1;
                    break;
                }
                _ => return None,
            }
        }
        Some(Value::Dict(Tag::Default, d))
    }

    fn string(&mut self) -> Option<Value> {
        let quote = self.s[self.i];
        self.i += 1;
        let mut out = Vec::new();
        while self.i < self.s.len() {
            let c = self.s[self.i];
            self.i += 1;
            if c == quote {
                return Some(Value::String(Tag::Default, String::from_utf8(out).ok()?));
            }
            if c == b'\\' {
                let e = *self.s.get(self.i)?;
                self.i += 1;
                out.push(match e {
                    b'n' => b'\n',
                    b't' => b'\t',
                    b'\\' => b'\\',
                    b'\'' => b'\'',
                    b'"' => b'"',
                    _ => return None,
                });
            } else {
                out.push(c);
            }
        }
        None
    }

    fn number(&mut self) -> Option<Value> {
        let start = self.i;
        let mut sign = 1i128;
        if matches!(self.s[self.i], b'-' | b'+') {
            if self.s[self.i] == b'-' {
                sign = -1;
            }
            self.i += 1;
            self.ws();
        }
        let body_start = self.i;
        let mut is_float = false;
        while self.i < self.s.len() {
            let c = self.s[self.i];
            match c {
                b'0'..=b'9' | b'_' => {}
                b'.' => is_float = true,
                b'e' | b'E' => {
                    is_float = true;
                    if matches!(self.s.get(self.i + 1), Some(b'-' | b'+')) {
                        self.i += 1;
                    }
                }
                _ => break,
            }
            self.i += 1;
        }
        let body: String = std::str::from_utf8(&self.s[body_start..self.i])
            .ok()?
            .replace('_', "");
        if body.is_empty() || body == "." {
            self.i = start;
            return None;
        }
        if is_float {
            if !body.bytes().any(|b| b.is_ascii_digit()) {
                return None;
            }
            let f: f64 = body.parse().ok()?;
            Some(Value::Num(Tag::Default, Num::F64(sign as f64 * f)))
        } else {
            // Python rejects leading zeros in non-zero decimal integers ("007").
            if body.len() > 1 && body.starts_with('0') && body.bytes().any(|b| b != b'0') {
                return None;
            }
            let i: i128 = body.parse().ok()?;
            let i = sign * i;
            let n = i64::try_from(i).map(Num::I64).ok()?;
            Some(Value::Num(Tag::Default, n))
        }
    }

    fn word(&mut self) -> Option<Value> {
        let start = self.i;
        while self.i < self.s.len()
            && (self.s[self.i].is_ascii_alphanumeric() || self.s[self.i] == b'_')
        {
            self.i += 1;
        }
        match &self.s[start..self.i] {
            b"True" => Some(Value::Bool(Tag::Default, true)),
            b"False" => Some(Value::Bool(Tag::Default, false)),
            b"None" => Some(Value::Empty(Tag::Default, Empty::None)),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn literals_parse_like_python() {
        let f = |s: &str| parse_literal(s);
        assert_eq!(f("1e-4").to_f64(), Some(1e-4));
        assert_eq!(f("-3").to_i128(), Some(-3));
        assert_eq!(f(".5").to_f64(), Some(0.5));
        assert_eq!(f("'market1501'").as_str(), Some("market1501"));
        assert_eq!(f("market1501").as_str(), Some("market1501"));
        assert_eq!(f("True").to_bool_lossy(), Some(true));
        assert_eq!(
            f("true").as_str(),
            Some("true"),
            "lower-case true is not a Python literal"
        );
        assert_eq!(f("007").as_str(), Some("007"));
        assert!(matches!(f("None"), Value::Empty(..)), "None");
        let Value::Array(_, items) = f("(40, 70)") else {
            panic!()
        };
        assert_eq!(items.len(), 2);
        let Value::Array(_, items) = f("[0]") else {
            panic!()
        };
        assert_eq!(items[0].to_i128(), Some(0));
        assert_eq!(f("(5)").to_i128(), Some(5), "(5) is an int");
        assert!(matches!(f("(5,)"), Value::Array(..)), "(5,) is a tuple");
        assert_eq!(f("/home/data").as_str(), Some("/home/data"));
        assert_eq!(f("[1, 2").as_str(), Some("[1, 2"));
        let Value::Dict(_, d) = f("{'start': 30, 'end': 75}") else {
            panic!()
        };
        assert_eq!(d["end"].to_i128(), Some(75));
        assert_eq!(f("{'a' 1}").as_str(), Some("{'a' 1}"));
    }
}
