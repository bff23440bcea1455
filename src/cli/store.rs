//! `docker-idpb images`, `rm` and `prune`: the local store, visible.
//!
//! Each reads as validate -> store -> print: the format is checked first, [`crate::store::Store`] decides
//! what the store holds and what goes, and this module only lays it out, as `docker images`, `docker rmi`
//! and `docker image prune` do (a table with the digest cut to 12 hex digits, `Untagged:` lines, one line
//! of totals), or as JSON with full digests and sizes in bytes.

use serde_json::json;

use super::inspect::json_format;
use super::{ImagesArgs, PruneArgs, RmArgs, store_dir};
use crate::error::{Error, Result};
use crate::progress::{ago, escaped, human};
use crate::store::Store;

fn print(out: &str) -> Result<()> {
    use std::io::Write;
    let mut stdout = std::io::stdout().lock();
    stdout.write_all(out.as_bytes()).and_then(|_| stdout.flush()).map_err(|e| Error::io("stdout", "write", e))
}

pub fn images(args: ImagesArgs) -> Result<()> {
    let json = json_format(&args.format)?;
    let images = Store::new(&store_dir()?).images()?;
    if json {
        let list: Vec<_> = images
            .iter()
            .map(|i| {
                json!({
                    "name": i.name,
                    "tag": i.tag,
                    "reference": i.reference(),
                    "digest": i.digest,
                    "mediaType": i.media_type,
                    "size": i.size,
                    "total_size": i.total_size,
                    "stored": crate::image::rfc3339(i.stored),
                })
            })
            .collect();
        return print(&format!("{}\n", serde_json::Value::Array(list)));
    }
    if args.quiet {
        return print(&images.iter().map(|i| format!("{}\n", escaped(&i.reference()))).collect::<String>());
    }
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs());
    let mut rows = vec![["NAME", "TAG", "DIGEST", "STORED", "SIZE"].map(String::from)];
    for i in &images {
        rows.push([
            escaped(&i.name),
            escaped(&i.tag),
            i.digest.hex()[..12].to_string(),
            ago(now.saturating_sub(i.stored)),
            human(i.total_size),
        ]);
    }
    print(&table(&rows))
}

/// Rows as columns padded to their widest cell plus three spaces (the last column unpadded).
fn table<const N: usize>(rows: &[[String; N]]) -> String {
    let mut widths = [0; N];
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    for row in rows {
        let mut line = String::new();
        for (n, (cell, w)) in row.iter().zip(widths).enumerate() {
            if n + 1 == N {
                line.push_str(cell);
            } else {
                line.push_str(&format!("{cell:<width$}", width = w + 3));
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

pub fn rm(args: RmArgs) -> Result<()> {
    let json = json_format(&args.format)?;
    if args.names.is_empty() {
        return Err(Error::usage("rm needs at least one NAME[:TAG]; `docker-idpb images` lists them"));
    }
    let removed = Store::new(&store_dir()?).remove(&args.names)?;
    if json {
        return print(&format!("{}\n", json!({ "untagged": removed })));
    }
    if args.quiet {
        return Ok(());
    }
    print(&removed.iter().map(|r| format!("Untagged: {}\n", escaped(r))).collect::<String>())
}

pub fn prune(args: PruneArgs) -> Result<()> {
    let json = json_format(&args.format)?;
    let store = Store::new(&store_dir()?);
    let quiet = args.quiet;
    let pruned = store.prune(&crate::signal::Cancel::process(), || {
        if !quiet {
            eprintln!("waiting for a build into the local store to finish...");
        }
    })?;
    if json {
        return print(&format!(
            "{}\n",
            json!({ "deleted": pruned.blobs, "freed": pruned.freed, "temp_files": pruned.temp_files })
        ));
    }
    let plural = |n: u64, one: &str, many: &str| format!("{n} {}", if n == 1 { one } else { many });
    let mut what = plural(pruned.blobs, "blob", "blobs");
    if pruned.temp_files > 0 {
        what.push_str(&format!(" and {}", plural(pruned.temp_files, "temp file", "temp files")));
    }
    print(&format!("Deleted {what}, freed {}\n", human(pruned.freed)))
}

#[cfg(test)]
mod tests {
    #[test]
    fn tables_pad_every_column_but_the_last() {
        let rows = [["NAME", "TAG", "SIZE"].map(String::from), ["app", "latest", "1.0 kB"].map(String::from)];
        assert_eq!(super::table(&rows), "NAME   TAG      SIZE\napp    latest   1.0 kB\n");
    }
}
