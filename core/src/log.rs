//! One text form of the library's log events, for the bindings that forward `tracing` events to
//! their host's logging (a C callback, Python's `logging`, Go's `slog`).

use std::fmt::Write as _;

use tracing::field::{Field, Visit};

/// The event's message followed by its other fields: `message key=value key=value`.
pub fn event_text(event: &tracing::Event<'_>) -> String {
    let mut text = Text::default();
    event.record(&mut text);
    match (text.message.is_empty(), text.fields.is_empty()) {
        (_, true) => text.message,
        (true, false) => text.fields,
        (false, false) => format!("{} {}", text.message, text.fields),
    }
}

#[derive(Default)]
struct Text {
    message: String,
    fields: String,
}

impl Text {
    fn field(&mut self, name: &str, value: std::fmt::Arguments<'_>) {
        if !self.fields.is_empty() {
            self.fields.push(' ');
        }
        let _ = write!(self.fields, "{name}={value}");
    }
}

impl Visit for Text {
    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == "message" {
            self.message.push_str(value);
        } else {
            self.field(field.name(), format_args!("{value:?}"));
        }
    }

    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        if field.name() == "message" {
            let _ = write!(self.message, "{value:?}");
        } else {
            self.field(field.name(), format_args!("{value:?}"));
        }
    }
}
