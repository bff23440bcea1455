//! Debian's nginx on a random loopback port as an ingress stand-in in front of a plain-HTTP registry.
//!
//! The point is the body-size limit real ingresses enforce (`client_max_body_size`, answered with an HTML
//! 413 before the body is read). Everything nginx writes lives in the fixture's temp dir: config, pid
//! file, error and access logs, and the five temp paths, so several instances run side by side and no
//! root-owned default path is touched. `master_process off` keeps it to one process that runs as the
//! current user (as root, workers would switch to `nobody` and lose access to the temp dir) and dies
//! with the [`Daemon`] guard. `proxy_set_header Host $http_host` makes the registry build its upload
//! `Location`s from nginx's address, as an ingress does. The access log uses a tab-separated format of
//! method, URI, status and request length, which [`Nginx::requests`] parses.

use super::TempDir;
use super::context::write_file;
use super::http::{Request, try_fetch};
use super::process::{Daemon, require_tool, start_on_free_port};
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::thread;
use std::time::Duration;

/// Knobs of the generated config.
#[derive(Clone, Debug)]
pub struct NginxOptions {
    /// `client_max_body_size`, in nginx syntax (`1m`, `512k`).
    pub client_max_body_size: String,
    /// Extra directives for the `server` block.
    pub extra_server_config: String,
}

impl Default for NginxOptions {
    fn default() -> Self {
        NginxOptions { client_max_body_size: "1m".to_string(), extra_server_config: String::new() }
    }
}

/// One line of nginx's access log.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NginxLogEntry {
    pub method: String,
    /// Path and query as requested.
    pub path: String,
    pub status: u16,
    /// Request line, headers and body, in bytes.
    pub request_length: u64,
}

/// A running nginx; killed, and its dir removed, on drop.
#[derive(Debug)]
pub struct Nginx {
    // Fields drop in order: the process before its dir.
    process: Daemon,
    port: u16,
    dir: TempDir,
}

impl Nginx {
    /// nginx with `client_max_body_size 1m` in front of the registry on `127.0.0.1:upstream_port`.
    pub fn start(upstream_port: u16) -> Nginx {
        Nginx::start_with(upstream_port, &NginxOptions::default())
    }

    pub fn start_with(upstream_port: u16, options: &NginxOptions) -> Nginx {
        let nginx = require_tool("nginx");
        let dir = TempDir::new("nginx");
        let temp = dir.subdir("temp");
        let (process, port) = start_on_free_port(|port| {
            let config = dir.join("nginx.conf");
            let error_log = dir.join("error.log");
            let _ = fs::remove_file(&error_log);
            write_file(&config, config_text(dir.path(), &temp, port, upstream_port, options).as_bytes());
            let mut cmd = Command::new(&nginx);
            cmd.arg("-p").arg(dir.path()).arg("-c").arg(&config).arg("-e").arg(&error_log);
            let mut process = Daemon::spawn(cmd, "nginx", dir.join("nginx.out"));
            let probe = format!("http://127.0.0.1:{port}/v2/");
            match process.wait_ready(|| try_fetch(Request::new("GET", &probe)).is_ok()) {
                Ok(()) => Ok(process),
                Err(output) => Err(format!("{output}\nerror.log:\n{}", read_lossy(&error_log))),
            }
        });
        Nginx { process, port, dir }
    }

    /// `127.0.0.1:PORT`, the registry part of references pushed through nginx.
    pub fn host(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// `http://127.0.0.1:PORT` + `path`.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.host())
    }

    /// `127.0.0.1:PORT/REPO[:TAG]`.
    pub fn reference(&self, repo: &str) -> String {
        format!("{}/{repo}", self.host())
    }

    /// nginx's error log (and whatever it printed).
    pub fn error_log(&self) -> String {
        format!("{}{}", self.process.log(), read_lossy(&self.dir.join("error.log")))
    }

    /// Parsed access-log lines. nginx writes a line once a request is done, so this waits until the log
    /// stops growing (50 ms) before reading it.
    pub fn requests(&self) -> Vec<NginxLogEntry> {
        let path = self.dir.join("access.log");
        let mut log = read_lossy(&path);
        for _ in 0..20 {
            thread::sleep(Duration::from_millis(50));
            let again = read_lossy(&path);
            if again == log {
                break;
            }
            log = again;
        }
        log.lines().filter_map(parse_log_line).collect()
    }

    /// How many requests had this method, a path containing `path_part` and, if given, this status.
    pub fn count_requests(&self, method: &str, path_part: &str, status: Option<u16>) -> usize {
        self.requests()
            .iter()
            .filter(|r| r.method == method && r.path.contains(path_part) && status.is_none_or(|s| r.status == s))
            .count()
    }
}

fn config_text(dir: &Path, temp: &Path, port: u16, upstream_port: u16, options: &NginxOptions) -> String {
    let p = |path: PathBuf| path.to_string_lossy().into_owned();
    let (pid, access) = (p(dir.join("nginx.pid")), p(dir.join("access.log")));
    let error = p(dir.join("error.log"));
    let temps: String = ["client_body", "proxy", "fastcgi", "uwsgi", "scgi"]
        .iter()
        .map(|name| format!("    {name}_temp_path {};\n", p(temp.join(name))))
        .collect();
    format!(
        "daemon off;\n\
         master_process off;\n\
         worker_processes 1;\n\
         pid {pid};\n\
         error_log {error} info;\n\
         events {{ worker_connections 256; }}\n\
         http {{\n\
         {temps}\
         \x20   log_format idpb '$request_method\\t$request_uri\\t$status\\t$request_length';\n\
         \x20   access_log {access} idpb;\n\
         \x20   server {{\n\
         \x20       listen 127.0.0.1:{port};\n\
         \x20       client_max_body_size {max};\n\
         \x20       client_body_buffer_size 128k;\n\
         \x20       location / {{\n\
         \x20           proxy_pass http://127.0.0.1:{upstream_port};\n\
         \x20           proxy_set_header Host $http_host;\n\
         \x20           proxy_http_version 1.1;\n\
         \x20           proxy_request_buffering on;\n\
         \x20           proxy_buffering off;\n\
         \x20           proxy_redirect off;\n\
         \x20           proxy_connect_timeout 10s;\n\
         \x20           proxy_read_timeout 60s;\n\
         \x20           proxy_send_timeout 60s;\n\
         \x20       }}\n\
         {extra}\n\
         \x20   }}\n\
         }}\n",
        max = options.client_max_body_size,
        extra = options.extra_server_config,
    )
}

/// `PATCH\t/v2/...\t202\t262422` -> entry; other lines -> None.
fn parse_log_line(line: &str) -> Option<NginxLogEntry> {
    let mut fields = line.split('\t');
    let (method, path, status, length) = (fields.next()?, fields.next()?, fields.next()?, fields.next()?);
    Some(NginxLogEntry {
        method: method.to_string(),
        path: path.to_string(),
        status: status.parse().ok()?,
        request_length: length.trim().parse().ok()?,
    })
}

fn read_lossy(path: &Path) -> String {
    fs::read(path).map(|b| String::from_utf8_lossy(&b).into_owned()).unwrap_or_default()
}
