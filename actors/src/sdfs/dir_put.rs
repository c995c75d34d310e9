//! A put of a local directory, run by the tool that holds the directory (`dml ctl`,
//! through `dml_cluster::ask`): the files and their names ([`dir_files`]), which files
//! start next (a few at a time), and what the put answers once every file is done (it
//! fails if any file failed). Each file is its own put, streamed to the node.

use std::collections::VecDeque;
use std::fs;
use std::path::{Path, PathBuf};

use super::SdfsName;

/// What a put of a local file or directory stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PutLocalDone {
    /// One file, stored as `version` of `name`.
    File {
        /// The SDFS name.
        name: String,
        /// The version stored.
        version: u64,
    },
    /// Every file of the directory, by SDFS name, in the order they were stored.
    Dir {
        /// The SDFS prefix the directory went under.
        prefix: String,
        /// (name, version) of each file.
        stored: Vec<(String, u64)>,
    },
}

/// Every regular file under `root` (symlinks are not followed), sorted, with its SDFS
/// name `prefix/relative/path`. Any name that fails validation fails the whole put, so
/// nothing is stored.
pub fn dir_files(root: &Path, prefix: &str) -> Result<Vec<(PathBuf, SdfsName)>, String> {
    let mut out = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        let entries =
            fs::read_dir(&dir).map_err(|e| format!("cannot list {}: {e}", dir.display()))?;
        for entry in entries {
            let entry = entry.map_err(|e| format!("cannot list {}: {e}", dir.display()))?;
            let path = entry.path();
            let ft = entry
                .file_type()
                .map_err(|e| format!("{}: {e}", path.display()))?;
            if ft.is_dir() {
                stack.push(path);
            } else if ft.is_file() {
                let rel = path
                    .strip_prefix(root)
                    .ok()
                    .and_then(|r| r.to_str())
                    .ok_or_else(|| format!("{}: not a UTF-8 path", path.display()))?;
                let full = format!("{}/{rel}", prefix.trim_end_matches('/'));
                let name = SdfsName::parse(&full).map_err(|e| super::name::bad_name(&full, &e))?;
                out.push((path, name));
            }
        }
    }
    out.sort_by(|a, b| a.1.as_str().cmp(b.1.as_str()));
    Ok(out)
}

/// Files of a directory put in flight at once.
pub const PARALLELISM: usize = 4;

/// A directory put: files queued, in flight, and the results so far.
#[derive(Debug)]
pub struct DirPut {
    prefix: String,
    queue: VecDeque<(PathBuf, SdfsName)>,
    running: usize,
    total: usize,
    stored: Vec<(String, u64)>,
    errors: Vec<String>,
}

impl DirPut {
    /// A put of `files` (of the local directory `dir`) under `prefix`; a directory with
    /// no file is an error.
    pub fn new(
        dir: &Path,
        prefix: &SdfsName,
        files: Vec<(PathBuf, SdfsName)>,
    ) -> Result<Self, String> {
        if files.is_empty() {
            return Err(format!("{}: no files to put", dir.display()));
        }
        Ok(DirPut {
            prefix: prefix.to_string(),
            total: files.len(),
            queue: files.into(),
            running: 0,
            stored: Vec::new(),
            errors: Vec::new(),
        })
    }

    /// The files to start now; each must be answered with [`DirPut::file_done`].
    pub fn start_next(&mut self) -> Vec<(PathBuf, SdfsName)> {
        let mut starts = Vec::new();
        while self.running < PARALLELISM {
            let Some(next) = self.queue.pop_front() else {
                break;
            };
            self.running += 1;
            starts.push(next);
        }
        starts
    }

    /// One file's put ended with its version or an error; returns a progress line for
    /// the log when it was stored.
    pub fn file_done(&mut self, name: &str, result: Result<u64, String>) -> Option<String> {
        self.running = self.running.saturating_sub(1);
        match result {
            Ok(version) => {
                self.stored.push((name.to_string(), version));
                Some(format!(
                    "put {}: [{}/{}] {name} v{version}",
                    self.prefix,
                    self.stored.len() + self.errors.len(),
                    self.total
                ))
            }
            Err(e) => {
                self.errors.push(format!("{name}: {e}"));
                None
            }
        }
    }

    /// Files in the put.
    pub fn total(&self) -> usize {
        self.total
    }

    /// Files done so far, stored or failed.
    pub fn finished(&self) -> usize {
        self.stored.len() + self.errors.len()
    }

    /// Files that failed so far.
    pub fn failed(&self) -> usize {
        self.errors.len()
    }

    /// Whether every file is done.
    pub fn is_done(&self) -> bool {
        self.running == 0 && self.queue.is_empty()
    }

    /// The answer of a finished put: every file stored, or the first error.
    pub fn result(self) -> Result<PutLocalDone, String> {
        match self.errors.first() {
            Some(first) if self.stored.is_empty() => Err(format!(
                "put {}/: every one of the {} files failed; first: {first}",
                self.prefix, self.total
            )),
            Some(first) => Err(format!(
                "put {}/: {} of {} files failed; first: {first}",
                self.prefix,
                self.errors.len(),
                self.total
            )),
            None => Ok(PutLocalDone::Dir {
                prefix: self.prefix,
                stored: self.stored,
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn files(n: usize) -> Vec<(PathBuf, SdfsName)> {
        (0..n)
            .map(|i| {
                let name = SdfsName::parse(&format!("d/f{i}")).unwrap();
                (PathBuf::from(format!("/tmp/d/f{i}")), name)
            })
            .collect()
    }

    fn prefix() -> SdfsName {
        SdfsName::parse("d").unwrap()
    }

    #[test]
    fn an_empty_directory_is_an_error() {
        let e = DirPut::new(Path::new("/tmp/d"), &prefix(), Vec::new()).unwrap_err();
        assert_eq!(e, "/tmp/d: no files to put");
    }

    #[test]
    fn files_run_a_few_at_a_time_and_all_are_answered() {
        let mut d = DirPut::new(Path::new("/tmp/d"), &prefix(), files(6)).unwrap();
        let first = d.start_next();
        assert_eq!(first.len(), PARALLELISM);
        assert!(d.start_next().is_empty(), "no more while all slots run");
        let line = d.file_done(first[0].1.as_str(), Ok(3));
        assert_eq!(line.as_deref(), Some("put d: [1/6] d/f0 v3"));
        assert_eq!(d.start_next().len(), 1);
        let mut v = 4;
        while !d.is_done() {
            let _ = d.start_next();
            d.file_done("d/x", Ok(v));
            v += 1;
        }
        let Ok(PutLocalDone::Dir { prefix, stored }) = d.result() else {
            panic!("the put failed")
        };
        assert_eq!((prefix.as_str(), stored.len()), ("d", 6));
    }

    #[test]
    fn one_failed_file_fails_the_put_with_the_first_error() {
        let mut d = DirPut::new(Path::new("/tmp/d"), &prefix(), files(2)).unwrap();
        let started = d.start_next();
        d.file_done(started[0].1.as_str(), Err("disk on fire".into()));
        d.file_done(started[1].1.as_str(), Ok(1));
        assert!(d.is_done());
        assert_eq!((d.total(), d.finished(), d.failed()), (2, 2, 1));
        assert_eq!(
            d.result(),
            Err("put d/: 1 of 2 files failed; first: d/f0: disk on fire".into())
        );
    }

    #[test]
    fn a_put_whose_every_file_failed_says_so() {
        let mut d = DirPut::new(Path::new("/tmp/d"), &prefix(), files(2)).unwrap();
        let started = d.start_next();
        for (_, name) in &started {
            d.file_done(
                name.as_str(),
                Err("every live node refused the write".into()),
            );
        }
        assert!(d.is_done());
        assert_eq!(
            d.result(),
            Err(
                "put d/: every one of the 2 files failed; first: d/f0: every live node \
                 refused the write"
                    .into()
            )
        );
    }
}
