//! The interactive console of `dml node`: rustyline (history, help, completion) on its
//! own thread, sending each command to the node over the same authenticated path that
//! `dml ctl` uses, so both share one parser and one executor. Like `dml ctl`, it is the
//! tool side: it opens the LOCAL files of `put`/`get` itself (as the operator at this
//! terminal) and streams them; the node's command handler never takes a path.

use std::borrow::Cow;
use std::thread::JoinHandle;
use std::time::Duration;

use dml_actors::config::Config;
use dml_actors::control::{self, Command, Request};
use dml_actors::types::NodeAddr;
use rustyline::completion::{Completer, Pair};
use rustyline::error::ReadlineError;
use rustyline::highlight::Highlighter;
use rustyline::hint::Hinter;
use rustyline::validate::Validator;
use rustyline::{Editor, Helper};

use crate::ctl;

pub fn stdin_is_terminal() -> bool {
    use std::io::IsTerminal;
    std::io::stdin().is_terminal()
}

struct Words;

impl Completer for Words {
    type Candidate = Pair;
    fn complete(
        &self,
        line: &str,
        pos: usize,
        _ctx: &rustyline::Context<'_>,
    ) -> rustyline::Result<(usize, Vec<Pair>)> {
        let head = &line[..pos];
        if head.contains(' ') {
            return Ok((pos, Vec::new()));
        }
        let pairs = control::command_words()
            .into_iter()
            .filter(|w| w.starts_with(head))
            .map(|w| Pair {
                display: w.to_string(),
                replacement: format!("{w} "),
            })
            .collect();
        Ok((0, pairs))
    }
}

impl Hinter for Words {
    type Hint = String;
}
impl Highlighter for Words {
    fn highlight_prompt<'b, 's: 'b, 'p: 'b>(
        &'s self,
        prompt: &'p str,
        _default: bool,
    ) -> Cow<'b, str> {
        Cow::Borrowed(prompt)
    }
}
impl Validator for Words {}
impl Helper for Words {}

/// Starts the console thread; it ends when stdin closes.
pub fn spawn(config: Config, addr: NodeAddr) -> JoinHandle<()> {
    std::thread::spawn(move || {
        let Ok(mut rl) = Editor::<Words, rustyline::history::DefaultHistory>::new() else {
            return;
        };
        rl.set_helper(Some(Words));
        let history = config.log_dir.join(".dml_history");
        let _ = rl.load_history(&history);
        println!("dml console for {addr}; type `help`");
        loop {
            match rl.readline(&format!("dml {addr}> ")) {
                Ok(line) => {
                    let line = line.trim();
                    if line.is_empty() {
                        continue;
                    }
                    let _ = rl.add_history_entry(line);
                    if line == "exit" || line == "quit" {
                        println!("(the node keeps running; Ctrl-C stops it)");
                        continue;
                    }
                    run_line(&config, &addr, line);
                }
                Err(ReadlineError::Interrupted) | Err(ReadlineError::Eof) => break,
                Err(e) => {
                    eprintln!("console: {e}");
                    break;
                }
            }
        }
        let _ = rl.save_history(&history);
    })
}

fn run_line(config: &Config, addr: &NodeAddr, line: &str) {
    let words = match control::split_line(line) {
        Ok(w) => w,
        Err(e) => return eprintln!("error: {e}"),
    };
    let cmd = match control::parse(&words) {
        Ok(c) => c,
        Err(e) => return eprintln!("error: {e}"),
    };
    if cmd == Request::Node(Command::Help) {
        println!("{}", control::help_text());
        return;
    }
    match ctl::call(config, addr.as_str(), cmd, Duration::from_secs(3600)) {
        Ok(Ok(reply)) => println!("{}", reply.text),
        Ok(Err(e)) => eprintln!("error: {e}"),
        Err(e) => eprintln!("error: {e:#}"),
    }
}
