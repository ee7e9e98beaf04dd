//! `livetrace ps`: the processes of yours that run livetrace or have sites.

use super::*;

/// `livetrace ps`: every process of yours that has livetrace or sites
/// (all of them with --all): whether livetrace runs there, how many sites
/// its objects have, whether it can be attached to.
pub fn ps(dir: &Path, args: &PsArgs) -> Result<(), Error> {
    let style = Style::stdout();
    // Sockets left by processes that died without removing them.
    if let Ok(rd) = std::fs::read_dir(dir) {
        for e in rd.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if let Some(pid) = name
                .strip_suffix(".sock")
                .and_then(|p| p.parse::<u32>().ok())
            {
                if !Path::new(&format!("/proc/{pid}")).exists() {
                    let _ = std::fs::remove_file(e.path());
                }
            }
        }
    }
    // SAFETY: getuid cannot fail.
    let me = unsafe { libc::getuid() };
    let mut pids: Vec<i32> = std::fs::read_dir("/proc")
        .map_err(|e| Error::io("cannot read /proc", e))?
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
        .collect();
    pids.sort_unstable();
    let mut cache: std::collections::HashMap<(String, u64), Option<usize>> = Default::default();
    let mut rows = Vec::new();
    for pid in pids {
        if pid as u32 == std::process::id() {
            continue;
        }
        let Ok(st) = procfs::status(&pid.to_string()) else {
            continue;
        };
        if st.uids[0] != me {
            continue;
        }
        let Ok(maps) = procfs::maps(pid) else {
            continue;
        };
        if maps.is_empty() {
            continue; // a kernel thread
        }
        let modules = livetrace_inject::modules(pid, &maps, &procfs::root_of(pid));
        let sites: usize = modules
            .iter()
            .filter(|m| !is_livetrace_lib(m))
            .filter_map(|m| {
                let key = (m.maps[0].dev.clone(), m.maps[0].inode);
                *cache.entry(key).or_insert_with(|| sites_in(&m.file))
            })
            .sum();
        let socket = dir.join(format!("{pid}.sock")).exists() || find_socket(pid).is_some();
        let loaded = modules.iter().any(is_livetrace_lib);
        let state = if socket {
            "serving".to_string()
        } else if loaded {
            "loaded".to_string()
        } else if sites == 0 {
            "no sites".to_string()
        } else {
            match Target::inspect(pid) {
                Ok(_) => "attachable".to_string(),
                Err(r) => short_refusal(&r),
            }
        };
        if !args.all && !socket && !loaded && sites == 0 {
            continue;
        }
        let mut cmd = procfs::cmdline(pid).unwrap_or_default();
        if cmd.chars().count() > 100 {
            cmd = cmd.chars().take(99).chain(std::iter::once('…')).collect();
        }
        rows.push((pid, state, sites, cmd));
    }
    let mut out = std::io::stdout().lock();
    let _ = writeln!(
        out,
        "{}",
        style.bold(&format!(
            "{:>8}  {:<12}  {:>7}  COMMAND",
            "PID", "LIVETRACE", "SITES"
        ))
    );
    for (pid, state, sites, cmd) in rows {
        let st = format!("{state:<12}");
        let st = match state.as_str() {
            "serving" => style.good(&st),
            "attachable" | "loaded" => st,
            _ => style.dim(&st),
        };
        let _ = writeln!(out, "{pid:>8}  {st}  {sites:>7}  {cmd}");
    }
    Ok(())
}

pub(super) fn short_refusal(r: &livetrace_inject::Refusal) -> String {
    use livetrace_inject::Refusal::*;
    match r {
        Traced { .. } => "traced".into(),
        Static { .. } => "static".into(),
        NotRunning { .. } => "stopped".into(),
        Yama { .. } => "yama".into(),
        OtherUser { .. } | Undumpable(_) => "no access".into(),
        NoDlopen { .. } => "no dlopen".into(),
        NotX86_64 { .. } => "not x86-64".into(),
        _ => "refused".into(),
    }
}
