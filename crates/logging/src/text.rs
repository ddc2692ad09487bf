//! ztunnel's text lines: `<time>\t<level>\t<target>[:<span>{…}]…\t<message>\t<k>=<v> …`.
//!
//! See the [crate docs](crate) for the shape. Values are written with `Debug`, which is what
//! makes a string quoted (`"sleep"`) and a `Display` value, a `Debug` value or a number bare: a
//! string field reaches the visitor as `record_str`, a `%value` as a `DisplayValue` whose `Debug`
//! is its `Display`, a number as itself.

use std::fmt::{self, Write as _};

use tracing::field::{Field, Visit};
use tracing::{Event, Level, Subscriber};
use tracing_subscriber::field::RecordFields;
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields, FormattedFields};
use tracing_subscriber::registry::LookupSpan;

use crate::{Clock, Timestamp};

/// Formats an event as one text line (see the [crate docs](crate)).
#[derive(Debug, Clone, Copy, Default)]
pub struct TextFormat {
    clock: Clock,
}

/// Formats span fields as `k=v k=v` (shown as `:span{k=v k=v}` in a line's target column).
#[derive(Debug, Clone, Copy, Default)]
pub struct TextFields;

impl TextFormat {
    /// Lines stamped with `clock`'s time.
    pub fn new(clock: Clock) -> Self {
        Self { clock }
    }
}

impl<S, N> FormatEvent<S, N> for TextFormat
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
            "{}\t{}\t{}",
            Timestamp(self.clock.now()),
            lowercase(meta.level()),
            meta.target()
        )?;
        if let Some(scope) = ctx.event_scope() {
            for span in scope.from_root() {
                write!(writer, ":{}", span.name())?;
                let extensions = span.extensions();
                if let Some(fields) = extensions.get::<FormattedFields<N>>()
                    && !fields.is_empty()
                {
                    write!(writer, "{{{fields}}}")?;
                }
            }
        }
        if event.fields().next().is_some() {
            writer.write_char('\t')?;
        }
        let mut visitor = Visitor::new(writer.by_ref());
        event.record(&mut visitor);
        visitor.result?;
        writeln!(writer)
    }
}

impl<'w> FormatFields<'w> for TextFields {
    fn format_fields<R: RecordFields>(&self, writer: Writer<'w>, fields: R) -> fmt::Result {
        let mut visitor = Visitor::new(writer);
        fields.record(&mut visitor);
        visitor.result
    }
}

/// `trace`, `debug`, `info`, `warn` or `error`.
pub(crate) fn lowercase(level: &Level) -> &'static str {
    match *level {
        Level::TRACE => "trace",
        Level::DEBUG => "debug",
        Level::INFO => "info",
        Level::WARN => "warn",
        Level::ERROR => "error",
    }
}

// === the visitor ===

/// Writes the message followed by a TAB, and the other fields as space-separated `k=v`.
struct Visitor<'w> {
    writer: Writer<'w>,
    /// No `k=v` written yet (the message does not count).
    first: bool,
    result: fmt::Result,
}

impl<'w> Visitor<'w> {
    fn new(writer: Writer<'w>) -> Self {
        Self {
            writer,
            first: true,
            result: Ok(()),
        }
    }
}

impl Visit for Visitor<'_> {
    fn record_str(&mut self, field: &Field, value: &str) {
        // Quoted and escaped, as `Debug` prints a string.
        self.record_debug(field, &value);
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        if self.result.is_err() {
            return;
        }
        let name = field.name();
        self.result = if name.starts_with("log.") {
            // Metadata of events bridged from the `log` crate, not fields.
            Ok(())
        } else if name == "message" {
            write!(OneLine(&mut self.writer), "{value:?}")
                .and_then(|()| self.writer.write_char('\t'))
        } else {
            let separator = if std::mem::take(&mut self.first) {
                ""
            } else {
                " "
            };
            write!(self.writer, "{separator}{name}=")
                .and_then(|()| write!(OneLine(&mut self.writer), "{value:?}"))
        };
    }
}

/// Writes through to `W`, with newlines, carriage returns and TABs escaped (`\n`, `\r`, `\t`),
/// so a value stays on its line and in its column.
struct OneLine<'a, W>(&'a mut W);

impl<W: fmt::Write> fmt::Write for OneLine<'_, W> {
    fn write_str(&mut self, mut s: &str) -> fmt::Result {
        while let Some(at) = s.find(['\n', '\r', '\t']) {
            self.0.write_str(&s[..at])?;
            self.0.write_str(match s.as_bytes()[at] {
                b'\n' => "\\n",
                b'\r' => "\\r",
                _ => "\\t",
            })?;
            s = &s[at + 1..];
        }
        self.0.write_str(s)
    }
}
