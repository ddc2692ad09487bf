//! Chaining Ambit's plugin into a CNI network configuration, and out again, as text edits.
//!
//! A network configuration list (`.conflist`, CNI spec "Network configuration lists") runs its
//! `plugins` in order; Ambit's plugin, `{"type": "ambit-cni", ...}`, goes last, after the
//! cluster's network plugin has given the pod its addresses. A single configuration (`.conf`, a
//! plugin object with a `type`) is converted to a list holding it and Ambit's plugin; one whose
//! type is Ambit's own is refused (there is no network plugin to chain after).
//!
//! Edits touch only what they must: inserting appends one element after the last one, with the
//! separator the list already uses; every other byte of the file stays as it was, so other
//! tools' keys, plugins, order and formatting survive. Converting a single configuration keeps
//! its text as the list's first element.

use serde_json::{Map, Value};

use super::PLUGIN_TYPE;
use super::json_text;

/// What inserting the plugin does to a configuration.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Edit {
    /// The plugin is there, as wanted.
    Unchanged,
    /// The list, with the plugin inserted (or its settings brought up to date).
    Updated(String),
    /// A single configuration turned into a list ending with the plugin: to be written as a
    /// `.conflist`.
    Converted(String),
}

/// Why a configuration cannot be edited.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfError {
    #[error("not valid JSON")]
    NotJson(#[source] serde_json::Error),
    #[error("not a JSON object")]
    NotObject,
    #[error("neither a configuration list (`plugins`) nor a single configuration (`type`)")]
    NotNetwork,
    #[error("`plugins` is not a list")]
    PluginsNotList,
    #[error("the JSON text could not be edited in place")]
    Layout,
    #[error(
        "a single configuration of type `{PLUGIN_TYPE}`: no network plugin to chain Ambit's after"
    )]
    OnlyAmbit,
}

/// Inserts `plugin` (a JSON object with `"type": "ambit-cni"`) into the configuration `text`.
/// A plugin of that type already there with other settings is replaced; if it is there as
/// wanted, nothing changes.
pub(super) fn insert(text: &str, plugin: &Value) -> Result<Edit, ConfError> {
    let conf = parse(text)?;
    match (conf.get("plugins"), conf.get("type")) {
        (Some(Value::Array(plugins)), _) => {
            let ours: Vec<&Value> = plugins.iter().filter(|p| is_ours(p)).collect();
            if ours == [plugin] {
                return Ok(Edit::Unchanged);
            }
            let without = match remove_ours(text)? {
                Some(without) => without,
                None => text.to_owned(),
            };
            append(&without, plugin).map(Edit::Updated)
        }
        (Some(_), _) => Err(ConfError::PluginsNotList),
        // Ambit's plugin alone is no network: converting it would chain it twice.
        (None, Some(kind)) if kind.as_str() == Some(PLUGIN_TYPE) => Err(ConfError::OnlyAmbit),
        (None, Some(_)) => Ok(Edit::Converted(convert(text, &conf, plugin))),
        (None, None) => Err(ConfError::NotNetwork),
    }
}

/// The configuration `text` without Ambit's plugin; `None` when it holds none.
pub(super) fn remove(text: &str) -> Result<Option<String>, ConfError> {
    let conf = parse(text)?;
    match conf.get("plugins") {
        Some(Value::Array(_)) => remove_ours(text),
        Some(_) => Err(ConfError::PluginsNotList),
        None => Ok(None),
    }
}

/// Whether the configuration `text` (already known to parse) chains Ambit's plugin.
pub(super) fn has_plugin(text: &str) -> bool {
    parse(text).is_ok_and(|conf| match conf.get("plugins") {
        Some(Value::Array(plugins)) => plugins.iter().any(is_ours),
        _ => false,
    })
}

/// The plugin object, compact, `type` first.
pub(super) fn plugin_text(plugin: &Value) -> String {
    let mut rest = plugin.as_object().cloned().unwrap_or_default();
    let kind = rest
        .remove("type")
        .unwrap_or(Value::String(PLUGIN_TYPE.to_owned()));
    let mut text = format!("{{\"type\":{kind}");
    for (key, value) in rest {
        text.push_str(&format!(",{}:{value}", Value::String(key)));
    }
    text.push('}');
    text
}

fn parse(text: &str) -> Result<Map<String, Value>, ConfError> {
    match serde_json::from_str(text).map_err(ConfError::NotJson)? {
        Value::Object(conf) => Ok(conf),
        _ => Err(ConfError::NotObject),
    }
}

fn is_ours(plugin: &Value) -> bool {
    plugin.get("type").and_then(Value::as_str) == Some(PLUGIN_TYPE)
}

/// `text` with `plugin` appended to its `plugins`, every other byte unchanged.
fn append(text: &str, plugin: &Value) -> Result<String, ConfError> {
    let array = json_text::member(text, "plugins").ok_or(ConfError::Layout)?;
    let items = json_text::elements(text, array.clone()).ok_or(ConfError::Layout)?;
    let ours = plugin_text(plugin);
    let (at, insertion) = match &items[..] {
        [] => (array.start + 1, ours),
        [only] => {
            // The indentation of the one element, or none when it shares the bracket's line.
            let lead = &text[array.start + 1..only.start];
            let indent = lead.rfind('\n').map_or("", |n| &lead[n..]);
            let separator = if indent.is_empty() { ", " } else { "," };
            (only.end, format!("{separator}{indent}{ours}"))
        }
        [.., before, last] => (last.end, format!("{}{ours}", &text[before.end..last.start])),
    };
    let mut edited = String::with_capacity(text.len() + insertion.len());
    edited.push_str(&text[..at]);
    edited.push_str(&insertion);
    edited.push_str(&text[at..]);
    Ok(edited)
}

/// `text` without any Ambit plugin in its `plugins`; `None` when there is none. Each removed
/// element goes with the separator before it (after it, for elements before the first kept
/// one), so the kept elements keep theirs and removal undoes [`append`] byte for byte.
fn remove_ours(text: &str) -> Result<Option<String>, ConfError> {
    let array = json_text::member(text, "plugins").ok_or(ConfError::Layout)?;
    let items = json_text::elements(text, array.clone()).ok_or(ConfError::Layout)?;
    let mut ours = Vec::with_capacity(items.len());
    for item in &items {
        let value: Value = serde_json::from_str(&text[item.clone()]).map_err(ConfError::NotJson)?;
        ours.push(is_ours(&value));
    }
    if !ours.contains(&true) {
        return Ok(None);
    }
    let Some(first_kept) = ours.iter().position(|o| !o) else {
        // Nothing left: an empty list, keeping the layout after the last element (where
        // inserting into an empty list left the layout that list had).
        let last = items.last().map_or(array.end - 1, |item| item.end);
        return Ok(Some(format!("{}{}", &text[..=array.start], &text[last..])));
    };
    let mut edited = String::with_capacity(text.len());
    let mut at = 0;
    for (k, item) in items.iter().enumerate().filter(|(k, _)| ours[*k]) {
        let cut = if k < first_kept {
            item.start..items[k + 1].start
        } else {
            items[k - 1].end..item.end
        };
        edited.push_str(&text[at..cut.start.max(at)]);
        at = at.max(cut.end);
    }
    edited.push_str(&text[at..]);
    Ok(Some(edited))
}

/// A list holding the single configuration `text` (as written, re-indented) and `plugin`.
fn convert(text: &str, conf: &Map<String, Value>, plugin: &Value) -> String {
    let mut list = String::from("{\n");
    for key in ["cniVersion", "name"] {
        if let Some(value) = conf.get(key) {
            list.push_str(&format!("  \"{key}\": {value},\n"));
        }
    }
    // A JSON string holds no raw newline, so every newline of the text is layout: indenting
    // after each one cannot change a value.
    let original = text.trim().replace('\n', "\n    ");
    list.push_str(&format!(
        "  \"plugins\": [\n    {original},\n    {}\n  ]\n}}\n",
        plugin_text(plugin)
    ));
    list
}

#[cfg(test)]
mod tests;
