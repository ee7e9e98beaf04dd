mod common;
#[test]
fn scratch() {
    let dir = std::path::Path::new("/tmp/lt-uft/graph");
    let _ = std::fs::remove_dir_all(dir);
    livetrace_output::uftrace::write_dir(&common::graph_trace(), dir).unwrap();
    let dir = std::path::Path::new("/tmp/lt-uft/func");
    let _ = std::fs::remove_dir_all(dir);
    livetrace_output::uftrace::write_dir(&common::function_trace(), dir).unwrap();
}
