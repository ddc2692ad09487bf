//! Where things are in a JSON text, so a CNI configuration can be edited without reformatting
//! it: the value of a top-level member, the elements of an array, each as a byte range.
//!
//! The scanner assumes text that `serde_json` already accepted; on anything else it answers
//! `None` rather than guess.

use std::ops::Range;

/// The byte range of the value of `key` in the top-level object of `text` (the last one, if the
/// key repeats, as a JSON parser keeps the last).
pub(super) fn member(text: &str, key: &str) -> Option<Range<usize>> {
    let b = text.as_bytes();
    let mut i = skip_ws(b, 0);
    expect(b, &mut i, b'{')?;
    let mut found = None;
    loop {
        i = skip_ws(b, i);
        if *b.get(i)? == b'}' {
            return found;
        }
        let name_start = i;
        i = string_end(b, i)?;
        let name: String = serde_json::from_str(text.get(name_start..i)?).ok()?;
        i = skip_ws(b, i);
        expect(b, &mut i, b':')?;
        let value_start = skip_ws(b, i);
        i = value_end(b, value_start)?;
        if name == key {
            found = Some(value_start..i);
        }
        i = skip_ws(b, i);
        match *b.get(i)? {
            b',' => i += 1,
            b'}' => return found,
            _ => return None,
        }
    }
}

/// The byte ranges of the elements of the array at `array` (a range [`member`] returned).
pub(super) fn elements(text: &str, array: Range<usize>) -> Option<Vec<Range<usize>>> {
    let b = text.as_bytes().get(..array.end)?;
    let mut i = array.start;
    expect(b, &mut i, b'[')?;
    let mut found = Vec::new();
    i = skip_ws(b, i);
    if *b.get(i)? == b']' {
        return Some(found);
    }
    loop {
        let start = skip_ws(b, i);
        i = value_end(b, start)?;
        found.push(start..i);
        i = skip_ws(b, i);
        match *b.get(i)? {
            b',' => i += 1,
            b']' => return Some(found),
            _ => return None,
        }
    }
}

fn expect(b: &[u8], i: &mut usize, byte: u8) -> Option<()> {
    (*b.get(*i)? == byte).then(|| *i += 1)
}

fn skip_ws(b: &[u8], mut i: usize) -> usize {
    while b
        .get(i)
        .is_some_and(|c| matches!(c, b' ' | b'\t' | b'\n' | b'\r'))
    {
        i += 1;
    }
    i
}

/// The end of the value starting at `i`.
fn value_end(b: &[u8], i: usize) -> Option<usize> {
    match *b.get(i)? {
        b'"' => string_end(b, i),
        b'{' | b'[' => container_end(b, i),
        _ => {
            let mut j = i;
            while b
                .get(j)
                .is_some_and(|c| !matches!(c, b',' | b']' | b'}' | b' ' | b'\t' | b'\n' | b'\r'))
            {
                j += 1;
            }
            (j > i).then_some(j)
        }
    }
}

/// The end of the string starting at `i` (after its closing quote).
fn string_end(b: &[u8], i: usize) -> Option<usize> {
    if *b.get(i)? != b'"' {
        return None;
    }
    let mut j = i + 1;
    loop {
        match *b.get(j)? {
            b'\\' => j += 2,
            b'"' => return Some(j + 1),
            _ => j += 1,
        }
    }
}

/// The end of the object or array starting at `i`: brackets are counted outside strings.
fn container_end(b: &[u8], i: usize) -> Option<usize> {
    let mut depth = 0usize;
    let mut j = i;
    loop {
        match *b.get(j)? {
            b'"' => {
                j = string_end(b, j)?;
                continue;
            }
            b'{' | b'[' => depth += 1,
            b'}' | b']' => {
                depth = depth.checked_sub(1)?;
                if depth == 0 {
                    return Some(j + 1);
                }
            }
            _ => {}
        }
        j += 1;
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn finds_members_and_elements_through_strings_and_nesting() {
        let text =
            r#" { "a\"]}" : [1, {"x": "]}"}], "plugins" : [ {"type":"p1"} ,"s,]" , [ ] ,7 ] } "#;
        let a = member(text, "a\"]}").unwrap();
        assert_eq!(&text[a], r#"[1, {"x": "]}"}]"#);
        let plugins = member(text, "plugins").unwrap();
        let items: Vec<&str> = elements(text, plugins)
            .unwrap()
            .into_iter()
            .map(|r| &text[r])
            .collect();
        assert_eq!(items, [r#"{"type":"p1"}"#, r#""s,]""#, "[ ]", "7"]);
        assert_eq!(member(text, "missing"), None);
        let empty = r#"{"plugins": []}"#;
        assert!(
            elements(empty, member(empty, "plugins").unwrap())
                .unwrap()
                .is_empty()
        );
    }

    #[test]
    fn a_repeated_key_is_the_last_one() {
        let text = r#"{"k": 1, "k": 2}"#;
        assert_eq!(&text[member(text, "k").unwrap()], "2");
    }
}
