//! Listings (`ls-prefix`, `store`) as the tool sees them: a node answers one page at a
//! time (each page a bounded frame, with the cursor of the next in
//! [`Transfer::More`]); the tool asks page after page and writes the whole listing as it
//! arrives, as text lines or as one JSON array, so no listing has a size ceiling.

use std::io::Write;

use anyhow::{anyhow, bail, Context};
use dml_actors::control::{Command, Outcome, Reply, Transfer};
use dml_actors::net::body::Body;
use dml_actors::net::transport::{Client, Lane};

use crate::transfer::{request, Node};

/// How a listing is written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// The pages' text lines, then what needs the whole listing ("no names", a count).
    Text,
    /// One JSON array of every page's items.
    Json,
}

/// Writes a listing page by page to `out`.
pub struct Listing<W: Write> {
    out: W,
    format: Format,
    store: bool,
    items: u64,
    held: u64,
}

impl<W: Write> Listing<W> {
    /// A listing of `cmd` (`ls-prefix` or `store`) into `out`.
    pub fn new(out: W, format: Format, cmd: &Command) -> Self {
        Listing {
            out,
            format,
            store: matches!(cmd, Command::Store { .. }),
            items: 0,
            held: 0,
        }
    }

    /// Whether anything was written yet.
    pub fn started(&self) -> bool {
        self.items > 0
    }

    /// One page.
    pub fn page(&mut self, reply: &Reply) -> anyhow::Result<()> {
        let items: Vec<serde_json::Value> =
            serde_json::from_str(&reply.json).context("a listing page that is not a list")?;
        for item in &items {
            if self.format == Format::Json {
                let sep = if self.items == 0 { "[" } else { "," };
                write!(self.out, "{sep}{item}")?;
            }
            self.items += 1;
            if item["versions"].as_array().is_some_and(|v| !v.is_empty()) {
                self.held += 1;
            }
        }
        if self.format == Format::Text && !reply.text.is_empty() {
            writeln!(self.out, "{}", reply.text)?;
        }
        Ok(())
    }

    /// Ends the listing (closes the JSON array) and hands back the writer.
    pub fn finish(mut self) -> anyhow::Result<W> {
        match self.format {
            Format::Json if self.items == 0 => writeln!(self.out, "[]")?,
            Format::Json => writeln!(self.out, "]")?,
            Format::Text if self.store => writeln!(self.out, "{} names stored here", self.held)?,
            Format::Text if self.items == 0 => writeln!(self.out, "no names")?,
            Format::Text => {}
        }
        self.out.flush()?;
        Ok(self.out)
    }
}

/// Asks `node` for every page of the listing `cmd`, handing each to `page` in order. An
/// error is a transport failure (or `page`'s); the node's refusal is the `Err` inside.
pub(crate) async fn pages(
    node: &Node,
    cmd: Command,
    page: &mut dyn FnMut(&Reply) -> anyhow::Result<()>,
) -> anyhow::Result<Result<(), String>> {
    let mut client: Client<Body> = node.connect(Lane::Control).await?;
    let mut next = cmd.clone();
    let mut last: Option<String> = None;
    loop {
        let reply = match request(&mut client, node, next).await? {
            Ok(r) => r,
            Err(e) => return Ok(Err(e)),
        };
        page(&reply)?;
        match reply.transfer {
            None => return Ok(Ok(())),
            Some(Transfer::More { after }) => {
                // A cursor that does not move on would ask for the same page for ever.
                if last.as_ref().is_some_and(|l| after <= *l) {
                    bail!("node {} repeated its listing from {after:?}", node.addr);
                }
                last = Some(after.clone());
                next = cmd.page_after(after);
            }
            Some(other) => {
                return Err(anyhow!(
                    "node {} answered a listing with {other:?}",
                    node.addr
                ))
            }
        }
    }
}

/// The whole listing as one reply (its text and its JSON), for callers that want the
/// answer in memory ([`crate::ask`]).
pub(crate) async fn collect(node: &Node, cmd: Command) -> anyhow::Result<Outcome> {
    let mut text = Listing::new(Vec::new(), Format::Text, &cmd);
    let mut json = Listing::new(Vec::new(), Format::Json, &cmd);
    let got = pages(node, cmd, &mut |r| {
        text.page(r)?;
        json.page(r)
    })
    .await?;
    if let Err(e) = got {
        return Ok(Err(e));
    }
    let utf8 = |b: Vec<u8>| String::from_utf8(b).context("a listing that is not UTF-8");
    let text = utf8(text.finish()?)?;
    let json = utf8(json.finish()?)?;
    Ok(Ok(Reply {
        text: text.trim_end().to_string(),
        json: json.trim_end().to_string(),
        transfer: None,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn page(text: &str, json: serde_json::Value) -> Reply {
        Reply::new(text, json)
    }

    #[test]
    fn pages_make_one_json_array_and_one_text() {
        let cmd = Command::ls_prefix("a/");
        let mut json = Listing::new(Vec::new(), Format::Json, &cmd);
        let mut text = Listing::new(Vec::new(), Format::Text, &cmd);
        for p in [
            page("a/1\na/2", serde_json::json!(["a/1", "a/2"])),
            page("", serde_json::json!([])),
            page("a/3", serde_json::json!(["a/3"])),
        ] {
            json.page(&p).unwrap();
            text.page(&p).unwrap();
        }
        let json = String::from_utf8(json.finish().unwrap()).unwrap();
        let v: serde_json::Value = serde_json::from_str(&json).unwrap();
        assert_eq!(v, serde_json::json!(["a/1", "a/2", "a/3"]));
        let text = String::from_utf8(text.finish().unwrap()).unwrap();
        assert_eq!(text, "a/1\na/2\na/3\n");
    }

    #[test]
    fn an_empty_listing_says_so() {
        let cmd = Command::ls_prefix("none/");
        let mut text = Listing::new(Vec::new(), Format::Text, &cmd);
        text.page(&page("", serde_json::json!([]))).unwrap();
        assert_eq!(text.finish().unwrap(), b"no names\n");
        let json = Listing::new(Vec::new(), Format::Json, &cmd);
        assert_eq!(json.finish().unwrap(), b"[]\n");
    }

    #[test]
    fn store_counts_held_names_not_tombstones() {
        let cmd = Command::store();
        let mut text = Listing::new(Vec::new(), Format::Text, &cmd);
        let items = serde_json::json!([
            {"name": "a", "versions": [2, 1], "tombstone": 0},
            {"name": "b", "versions": [], "tombstone": 3},
        ]);
        text.page(&page("  a  versions 2, 1", items)).unwrap();
        let out = String::from_utf8(text.finish().unwrap()).unwrap();
        assert_eq!(out, "  a  versions 2, 1\n1 names stored here\n");
    }

    #[test]
    fn a_page_that_is_not_a_list_is_an_error() {
        let cmd = Command::store();
        let mut text = Listing::new(Vec::new(), Format::Text, &cmd);
        assert!(text.page(&page("x", serde_json::json!({"x": 1}))).is_err());
    }
}
