//! `livetrace ps`: the processes with a live control socket.

use std::io::Write;
use std::path::Path;

use crate::ui::Style;
use crate::Fail;

fn cmdline_of(pid: u32) -> Option<String> {
    let raw = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
    let words: Vec<String> = raw
        .split(|&b| b == 0)
        .filter(|w| !w.is_empty())
        .map(|w| String::from_utf8_lossy(w).into_owned())
        .collect();
    Some(words.join(" "))
}

pub fn run(dir: &Path) -> Result<(), Fail> {
    let style = Style::stdout();
    let mut pids: Vec<u32> = match std::fs::read_dir(dir) {
        Ok(rd) => rd
            .filter_map(|e| e.ok())
            .filter_map(|e| {
                let name = e.file_name().into_string().ok()?;
                name.strip_suffix(".sock")?.parse().ok()
            })
            .filter(|pid| {
                let alive = Path::new(&format!("/proc/{pid}")).exists();
                if !alive {
                    // A process killed by a signal cannot remove its
                    // socket; the directory is ours, so tidy it.
                    let _ = std::fs::remove_file(dir.join(format!("{pid}.sock")));
                }
                alive
            })
            .collect(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
        Err(e) => return Err(format!("cannot read {}: {e}", dir.display()).into()),
    };
    pids.sort_unstable();
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{}", style.bold(&format!("{:>8}  COMMAND", "PID")));
    for pid in pids {
        let cmd = cmdline_of(pid).unwrap_or_default();
        let _ = writeln!(out, "{pid:>8}  {cmd}");
    }
    Ok(())
}
