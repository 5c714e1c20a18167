//! medtune on a Ballista cluster: a scheduler and two executors started as processes on
//! 127.0.0.1, the bundled configs' data stages run on it, and every dataset compared with a
//! local run's by content hash; a query on the cluster gives the local rows; an executor
//! killed mid-run is survived, or the stage fails with nothing of it committed.
#![cfg(feature = "cluster")]

mod common;

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::net::TcpListener;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use arrow::util::display::{ArrayFormatter, FormatOptions};
use common::{big_alpaca, bundled_config, medtune, query_csv};
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;

/// A process killed when dropped, so a failing test leaves none behind.
struct Process(Child);

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

struct Cluster {
    url: String,
    executors: Vec<Process>,
    _scheduler: Process,
}

impl Cluster {
    /// A scheduler on a free port (it reports the port) and `executors` executors with two
    /// slots each, heartbeats every second, lost after 4 s of silence.
    fn start(dir: &Path, executors: usize) -> Cluster {
        let mut scheduler = Process(
            Command::new(env!("CARGO_BIN_EXE_medtune"))
                .args(["scheduler", "--port", "0", "--executor-timeout", "4"])
                .stdout(Stdio::piped())
                .stderr(Stdio::null())
                .spawn()
                .unwrap(),
        );
        let mut line = String::new();
        BufReader::new(scheduler.0.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let url = line
            .trim()
            .strip_prefix("medtune scheduler listening on ")
            .unwrap_or_else(|| panic!("scheduler said {line:?}"))
            .to_string();
        let mut cluster = Cluster {
            url,
            executors: Vec::new(),
            _scheduler: scheduler,
        };
        for n in 0..executors {
            cluster.add_executor(&dir.join(format!("executor-{n}")));
        }
        cluster
    }

    fn add_executor(&mut self, work_dir: &Path) {
        let (flight, grpc) = (free_port().to_string(), free_port().to_string());
        let child = Command::new(env!("CARGO_BIN_EXE_medtune"))
            .args(["executor", "--scheduler", &self.url, "--slots", "2"])
            .args([
                "--flight-port",
                &flight,
                "--grpc-port",
                &grpc,
                "--heartbeat",
                "1",
            ])
            .arg("--work-dir")
            .arg(work_dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        self.executors.push(Process(child));
    }
}

/// Every catalog dataset's content hash.
fn content_hashes(workdir: &Path) -> BTreeMap<String, String> {
    let catalog: serde_json::Value =
        serde_json::from_slice(&std::fs::read(workdir.join("catalog.json")).unwrap()).unwrap();
    let mut hashes = BTreeMap::new();
    for (name, entry) in catalog["datasets"].as_object().unwrap() {
        let manifest = workdir
            .join("cache")
            .join(entry["stage"].as_str().unwrap())
            .join(entry["key"].as_str().unwrap())
            .join("manifest.json");
        let manifest: serde_json::Value =
            serde_json::from_slice(&std::fs::read(&manifest).unwrap()).unwrap();
        let hash = manifest["datasets"][name]["content_hash"].as_str().unwrap();
        hashes.insert(name.clone(), hash.to_string());
    }
    hashes
}

/// The rows of dedup's first-occurrence table (which the engine writes: on a cluster, an
/// executor), each as text, sorted: the files' layout may differ, their rows may not.
fn dedup_first_occurrences(workdir: &Path) -> Vec<String> {
    let catalog: serde_json::Value =
        serde_json::from_slice(&std::fs::read(workdir.join("catalog.json")).unwrap()).unwrap();
    let key = catalog["datasets"]["deduped"]["key"].as_str().unwrap();
    let folder = workdir.join(format!(
        "cache/dedup/{key}/artifacts/dedup_state/keys-00000"
    ));
    let mut rows = Vec::new();
    for file in std::fs::read_dir(&folder).unwrap() {
        let file = std::fs::File::open(file.unwrap().path()).unwrap();
        let reader = ParquetRecordBatchReaderBuilder::try_new(file)
            .unwrap()
            .build()
            .unwrap();
        for batch in reader {
            let batch = batch.unwrap();
            let options = FormatOptions::default().with_null("null");
            let columns: Vec<_> = batch
                .columns()
                .iter()
                .map(|c| ArrayFormatter::try_new(c.as_ref(), &options).unwrap())
                .collect();
            for row in 0..batch.num_rows() {
                let cells: Vec<String> = columns.iter().map(|c| c.value(row).to_string()).collect();
                rows.push(cells.join(","));
            }
        }
    }
    rows.sort();
    rows
}

fn write(dir: &Path, name: &str) -> String {
    let path = dir.join(name);
    std::fs::write(&path, bundled_config(name)).unwrap();
    path.display().to_string()
}

#[test]
fn bundled_configs_on_a_cluster_equal_local_runs_and_survive_a_lost_executor() {
    let dir = tempfile::tempdir().unwrap();
    let mut cluster = Cluster::start(dir.path(), 2);
    let url = cluster.url.clone();
    // The data stages of the bundled configs, through tokenize (which maps rows with the
    // configured tokenizer) and shard.
    for name in ["bc5cdr.toml", "chemprot-smollm2.toml"] {
        let config = write(dir.path(), name);
        let local = dir.path().join(format!("local-{name}"));
        let remote = dir.path().join(format!("cluster-{name}"));
        let args = ["run", "--config", &config, "--stage", "shard"];
        medtune(&local, &args).expect(0);
        let clock = Instant::now();
        let run = medtune(&remote, &[&["--cluster", &url], &args[..]].concat()).expect(0);
        eprintln!(
            "{name} on the cluster: {:.1} s",
            clock.elapsed().as_secs_f64()
        );
        let (local_hashes, cluster_hashes) = (content_hashes(&local), content_hashes(&remote));
        assert!(local_hashes.contains_key("tokenized") && local_hashes.contains_key("cleaned"));
        assert_eq!(local_hashes, cluster_hashes, "{name}: {}", run.stdout);
        let firsts = dedup_first_occurrences(&local);
        assert!(firsts.len() > 1_000, "{name}: {} keys", firsts.len());
        assert_eq!(firsts, dedup_first_occurrences(&remote), "{name}");
        // A query on the cluster gives the local rows.
        let sql = "SELECT split, task, count(*) AS n, sum(length) AS tokens FROM tokenized \
                   GROUP BY split, task ORDER BY split, task";
        let on_cluster = medtune(
            &remote,
            &["--cluster", &url, "query", sql, "--format", "csv"],
        )
        .expect(0)
        .stdout;
        assert_eq!(on_cluster, query_csv(&local, sql), "{name}");
    }

    // An executor killed while tokenize maps a HealthCareMagic-sized corpus (112,165 rows).
    let corpus = big_alpaca(dir.path(), 112_165);
    let config = dir.path().join("hcm.toml");
    let text = bundled_config("healthcaremagic-smollm2.toml").replace(
        &format!(
            "{}/../../shared/data/chatdoctor/chatdoctor5k.json",
            common::repo().join("configs").display()
        ),
        &corpus.display().to_string(),
    );
    assert!(
        text.contains("alpaca-112165"),
        "the corpus replaces chatdoctor5k"
    );
    std::fs::write(&config, text).unwrap();
    let config = config.display().to_string();
    let (local, remote) = (dir.path().join("local-hcm"), dir.path().join("cluster-hcm"));
    medtune(&local, &["run", "--config", &config, "--stage", "tokenize"]).expect(0);
    let cluster_args = ["--cluster", url.as_str(), "run", "--config", &config];
    medtune(
        &remote,
        &[&cluster_args[..], &["--stage", "split"]].concat(),
    )
    .expect(0);
    let victim = dir.path().join("executor-0");
    let jobs_before = std::fs::read_dir(&victim).unwrap().count();
    let clock = Instant::now();
    let run = Command::new(env!("CARGO_BIN_EXE_medtune"))
        .arg("--workdir")
        .arg(&remote)
        .args(cluster_args)
        .args(["--stage", "tokenize"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Killed once it has taken a tokenize job.
    while std::fs::read_dir(&victim).unwrap().count() == jobs_before {
        assert!(
            clock.elapsed() < Duration::from_secs(120),
            "executor 0 took no job"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    drop(cluster.executors.remove(0));
    eprintln!(
        "executor 0 killed {:.1} s into tokenize",
        clock.elapsed().as_secs_f64()
    );
    let output = run.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    let tokenize_entries = || -> Vec<String> {
        std::fs::read_dir(remote.join("cache/tokenize"))
            .map(|entries| {
                entries
                    .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                    .filter(|name| !name.starts_with(".tmp-"))
                    .collect()
            })
            .unwrap_or_default()
    };
    eprintln!(
        "tokenize on the cluster: {:.1} s",
        clock.elapsed().as_secs_f64()
    );
    if output.status.success() {
        eprintln!("the run survived the lost executor");
    } else {
        // It failed cleanly: an engine error, and no tokenize output committed or cataloged.
        eprintln!("the run failed on the lost executor: {stderr}");
        assert_eq!(output.status.code(), Some(1), "{stderr}");
        assert!(stderr.contains("engine"), "{stderr}");
        assert!(tokenize_entries().is_empty(), "{:?}", tokenize_entries());
        assert!(!content_hashes(&remote).contains_key("tokenized"));
        // The surviving executor finishes it.
        medtune(
            &remote,
            &[&cluster_args[..], &["--stage", "tokenize"]].concat(),
        )
        .expect(0);
    }
    assert_eq!(content_hashes(&local), content_hashes(&remote), "{stderr}");
    assert_eq!(tokenize_entries().len(), 1);
}
