//! Log lines in ztunnel's shapes, for every Ambit binary and role.
//!
//! Operators read a node proxy's logs with `kubectl logs -n istio-system ds/ztunnel`, and their
//! scripts, log pipelines and alerts are written against ztunnel's lines. This crate holds two
//! `tracing-subscriber` event formatters that print what ztunnel prints:
//!
//! - **text** (the default), one line per event, columns separated by a TAB (`⇥` here):
//!
//!   ```text
//!   <time>⇥<level>⇥<target>[:<span>{<span fields>}]…⇥<message>⇥<key>=<value> <key>=<value> …
//!   2026-03-01T12:00:00.000000Z⇥info⇥access⇥connection complete⇥src.addr=10.0.0.5:43210 src.workload="prometheus-0" … duration="3ms"
//!   2026-03-01T12:00:00.000000Z⇥info⇥xds::client:xds{id=5}⇥received response⇥type_url="type.googleapis.com/istio.workload.Address" size=0 removes=1
//!   ```
//!
//!   `<time>` is RFC 3339 in UTC with microseconds; `<level>` is lowercase; each span the event
//!   is in (outermost first) adds `:<name>`, and `{<fields>}` when it has fields. The message
//!   column is always followed by a TAB, so a line with a message has five columns (the last
//!   empty when there are no fields). Field values keep the type they were recorded with:
//!   strings (`&str`, `String`) are quoted and escaped as Rust's `Debug` does (`"a \"b\""`),
//!   `Display` (`%value`) and `Debug` (`?value`) values and numbers are written bare. A field
//!   recorded as `None` (or `tracing::field::Empty`) is left out.
//! - **JSON** (`--log-format json`), one object per line with ztunnel's keys: `level`
//!   (lowercase), `time`, `scope` (the target), then the event's fields in order (`message`
//!   first), then one key per span, outermost first, named after the span and holding its
//!   fields as an object (`"xds":{"id":5}`). Numbers and booleans are JSON numbers and booleans;
//!   everything else is a string.
//!
//! The target is the event's own (`access`, `xds::client`, or a module path such as
//! `ambit_node::proxy::outbound`), so what a line shows is what a `RUST_LOG` filter matches.
//! ztunnel strips its crate name (`ztunnel::`) from text targets; Ambit's events that
//! operators match on (`access`, `xds::client`) name their target explicitly instead.
//!
//! Invariant: one event is one line. Strings are escaped by their quoting; in a message and in
//! a bare value a newline, carriage return or TAB is written as `\n`, `\r`, `\t` (ztunnel would
//! let those break the line or its columns), so no value can forge another line or shift the
//! columns of its own.

mod capture;
mod json;
mod text;
mod timestamp;

use std::time::SystemTime;

use tracing::Subscriber;
use tracing_subscriber::Layer;
use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::registry::LookupSpan;

pub use capture::Capture;
pub use json::{JsonFields, JsonFormat};
pub use text::{TextFields, TextFormat};
pub use timestamp::Timestamp;

/// Which of ztunnel's two shapes to print.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub enum Format {
    /// ztunnel's default: TAB-separated columns, `key=value` fields.
    #[default]
    Text,
    /// ztunnel's `LOG_FORMAT=json`: one object per line.
    Json,
}

/// Where a line's time comes from.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Clock {
    /// The system's wall clock, read when the line is formatted.
    #[default]
    System,
    /// Always this instant (golden tests).
    Fixed(SystemTime),
}

impl Clock {
    /// The instant to stamp a line with.
    pub fn now(self) -> SystemTime {
        match self {
            Self::System => SystemTime::now(),
            Self::Fixed(at) => at,
        }
    }
}

/// A `tracing-subscriber` layer printing every event it sees in `format` to `writer`. Put a
/// filter before it to choose which events those are.
pub fn layer<S, W>(format: Format, clock: Clock, writer: W) -> Box<dyn Layer<S> + Send + Sync>
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    W: for<'w> MakeWriter<'w> + Send + Sync + 'static,
{
    let layer = tracing_subscriber::fmt::layer()
        .with_ansi(false)
        .with_writer(writer);
    match format {
        Format::Text => Box::new(
            layer
                .event_format(TextFormat::new(clock))
                .fmt_fields(TextFields),
        ),
        Format::Json => Box::new(
            layer
                .event_format(JsonFormat::new(clock))
                .fmt_fields(JsonFields),
        ),
    }
}

/// A subscriber printing every event, of every level, in `format` to `writer` (tests and
/// tools; the binaries add their filter to [`layer`]).
pub fn subscriber<W>(format: Format, clock: Clock, writer: W) -> impl Subscriber + Send + Sync
where
    W: for<'w> MakeWriter<'w> + Send + Sync + 'static,
{
    tracing_subscriber::registry().with(layer(format, clock, writer))
}
