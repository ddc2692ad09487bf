//! ztunnel's JSON lines: `{"level":…,"time":…,"scope":…,"message":…,<fields>…,"<span>":{…}}`.
//!
//! See the [crate docs](crate) for the keys. Values follow the type they were recorded with:
//! `bool` → JSON boolean, integers that fit 64 bits and `f64` → JSON numbers (a non-finite float
//! is `null`, as `serde_json` writes it), a string → JSON string, anything else (`%value`,
//! `?value`, errors, 128-bit integers) → the JSON string of its `Debug` text. Keys are written in
//! the order the fields were declared; nothing is sorted or deduplicated.

use std::fmt::{self, Write as _};

use tracing::field::{Field, Visit};
use tracing::span::Record;
use tracing::{Event, Subscriber};
use tracing_subscriber::field::RecordFields;
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields, FormattedFields};
use tracing_subscriber::registry::LookupSpan;

use crate::text::lowercase;
use crate::{Clock, Timestamp};

/// Formats an event as one JSON object on one line (see the [crate docs](crate)).
#[derive(Debug, Clone, Copy, Default)]
pub struct JsonFormat {
    clock: Clock,
}

/// Formats span fields as a JSON object (`{"id":5}`), the value of the span's key in a line.
/// [`JsonFormat`] expects span fields in this form; other text is written as a JSON string.
#[derive(Debug, Clone, Copy, Default)]
pub struct JsonFields;

impl JsonFormat {
    /// Lines stamped with `clock`'s time.
    pub fn new(clock: Clock) -> Self {
        Self { clock }
    }
}

impl<S, N> FormatEvent<S, N> for JsonFormat
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        let meta = event.metadata();
        write!(
            writer,
            "{{\"level\":\"{}\",\"time\":\"{}\",\"scope\":",
            lowercase(meta.level()),
            Timestamp(self.clock.now()),
        )?;
        write_string(&mut writer, meta.target())?;
        let mut visitor = Visitor {
            writer: writer.by_ref(),
            first: false,
            result: Ok(()),
        };
        event.record(&mut visitor);
        visitor.result?;
        if let Some(scope) = ctx.event_scope() {
            for span in scope.from_root() {
                writer.write_char(',')?;
                write_string(&mut writer, span.name())?;
                writer.write_char(':')?;
                let extensions = span.extensions();
                match extensions.get::<FormattedFields<N>>() {
                    Some(fields) if fields.starts_with('{') => writer.write_str(fields)?,
                    Some(fields) if !fields.is_empty() => write_string(&mut writer, fields)?,
                    _ => writer.write_str("{}")?,
                }
            }
        }
        writer.write_str("}\n")
    }
}

impl<'w> FormatFields<'w> for JsonFields {
    fn format_fields<R: RecordFields>(&self, mut writer: Writer<'w>, fields: R) -> fmt::Result {
        writer.write_char('{')?;
        let mut visitor = Visitor {
            writer: writer.by_ref(),
            first: true,
            result: Ok(()),
        };
        fields.record(&mut visitor);
        visitor.result?;
        writer.write_char('}')
    }

    /// Merges fields recorded after the span was created into its object.
    fn add_fields(
        &self,
        current: &'w mut FormattedFields<Self>,
        fields: &Record<'_>,
    ) -> fmt::Result {
        let mut more = String::new();
        self.format_fields(Writer::new(&mut more), fields)?;
        let current = &mut current.fields;
        if more.len() <= 2 {
            return Ok(()); // `{}`: nothing recorded
        }
        if current.len() <= 2 {
            *current = more;
        } else {
            current.pop(); // its `}`
            current.push(',');
            current.push_str(&more[1..]);
        }
        Ok(())
    }
}

// === the visitor ===

/// Writes `,"key":value` per field (no comma before the first when `first`).
struct Visitor<'w> {
    writer: Writer<'w>,
    first: bool,
    result: fmt::Result,
}

impl Visitor<'_> {
    /// Writes the key, then `value` with the writer, unless an earlier write failed.
    fn entry(&mut self, field: &Field, value: impl FnOnce(&mut Writer<'_>) -> fmt::Result) {
        if self.result.is_err() {
            return;
        }
        let separator = if std::mem::take(&mut self.first) {
            ""
        } else {
            ","
        };
        self.result = self
            .writer
            .write_str(separator)
            .and_then(|()| write_string(&mut self.writer, field.name()))
            .and_then(|()| self.writer.write_char(':'))
            .and_then(|()| value(&mut self.writer));
    }
}

impl Visit for Visitor<'_> {
    fn record_bool(&mut self, field: &Field, value: bool) {
        self.entry(field, |w| write!(w, "{value}"));
    }

    fn record_u64(&mut self, field: &Field, value: u64) {
        self.entry(field, |w| write!(w, "{value}"));
    }

    fn record_i64(&mut self, field: &Field, value: i64) {
        self.entry(field, |w| write!(w, "{value}"));
    }

    fn record_f64(&mut self, field: &Field, value: f64) {
        self.entry(field, |w| match serde_json::Number::from_f64(value) {
            Some(number) => write!(w, "{number}"),
            None => w.write_str("null"),
        });
    }

    fn record_str(&mut self, field: &Field, value: &str) {
        self.entry(field, |w| write_string(w, value));
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        self.entry(field, |w| {
            w.write_char('"')?;
            write!(Escaped(w), "{value:?}")?;
            w.write_char('"')
        });
    }
}

/// Writes `s` as a JSON string.
fn write_string(writer: &mut impl fmt::Write, s: &str) -> fmt::Result {
    writer.write_char('"')?;
    Escaped(writer).write_str(s)?;
    writer.write_char('"')
}

/// Writes through to `W` with JSON string escaping (as `serde_json` escapes: `"`, `\` and the
/// control characters below U+0020).
struct Escaped<'a, W>(&'a mut W);

impl<W: fmt::Write> fmt::Write for Escaped<'_, W> {
    fn write_str(&mut self, mut s: &str) -> fmt::Result {
        while let Some(at) = s.find(|c: char| c == '"' || c == '\\' || c < ' ') {
            self.0.write_str(&s[..at])?;
            match s.as_bytes()[at] {
                b'"' => self.0.write_str("\\\"")?,
                b'\\' => self.0.write_str("\\\\")?,
                b'\n' => self.0.write_str("\\n")?,
                b'\r' => self.0.write_str("\\r")?,
                b'\t' => self.0.write_str("\\t")?,
                0x08 => self.0.write_str("\\b")?,
                0x0c => self.0.write_str("\\f")?,
                other => write!(self.0, "\\u{other:04x}")?,
            }
            s = &s[at + 1..];
        }
        self.0.write_str(s)
    }
}
