//! The demo's processes: `sniffer demo-part auth|store|api|client [--call PORT]...`.
use std::{
    collections::BTreeMap,
    io::{self, BufReader, Write as _},
    net::TcpListener,
    os::fd::AsRawFd as _,
    sync::{Arc, Mutex},
    time::Duration,
};

use super::wire::{self, Client, Message};
use crate::cli::DemoPartArgs;

/// What a service answers: status line, headers, body.
type Reply = (&'static str, Vec<(&'static str, String)>, String);

/// The demo password and the token auth issues (shown redacted by sniffer).
const PASSWORD: &str = "s3cret-demo-password";
const USER_TOKEN: &str = "gAAAAABdemo-user-token-7f3a9c";
const SERVICE_TOKEN: &str = "gAAAAABdemo-service-token-51be02";

fn json(v: serde_json::Value) -> String {
    v.to_string()
}

/// Serves connections on 127.0.0.1 (a thread each, keep-alive) with `handle`.
fn serve(handle: impl Fn(&Message) -> Reply + Send + Sync + 'static) -> io::Result<()> {
    let l = TcpListener::bind("127.0.0.1:0")?;
    println!("PORT {}", l.local_addr()?.port());
    io::stdout().flush()?;
    let handle = Arc::new(handle);
    loop {
        // Wait for a connection, then accept it: the accept then starts after sniffer does,
        // as in servers built on poll/epoll (a socket accepted by a call begun before the
        // capture has no role from its accept).
        let mut pfd = libc::pollfd {
            fd: l.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid pollfd.
        if unsafe { libc::poll(&mut pfd, 1, -1) } < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        let Ok((conn, _)) = l.accept() else { continue };
        let handle = handle.clone();
        std::thread::spawn(move || {
            let _ = conn.set_read_timeout(Some(Duration::from_secs(30)));
            // One fd for both directions, as real servers have (sniffer follows (pid, fd)).
            let mut w = &conn;
            let mut r = BufReader::new(&conn);
            while let Ok(Some(req)) = wire::read(&mut r) {
                let (status, headers, body) = handle(&req);
                let mut hs: Vec<(&str, &str)> = vec![("Content-Type", "application/json")];
                hs.extend(headers.iter().map(|(n, v)| (*n, v.as_str())));
                let close = req
                    .header("Connection")
                    .is_some_and(|c| c.eq_ignore_ascii_case("close"));
                if close {
                    hs.push(("Connection", "close"));
                }
                let bytes = wire::encode(&format!("HTTP/1.1 {status}"), &hs, body.as_bytes());
                if w.write_all(&bytes).is_err() || close {
                    break;
                }
            }
        });
    }
}

fn auth(req: &Message) -> Reply {
    match req.request_line() {
        ("GET", "/v3") => (
            "200 OK",
            vec![],
            json(serde_json::json!({"version": {"id": "v3.14", "status": "stable"}})),
        ),
        ("POST", "/v3/auth/tokens") => {
            let body: serde_json::Value = serde_json::from_slice(&req.body).unwrap_or_default();
            let user = body["auth"]["identity"]["password"]["user"]["name"]
                .as_str()
                .unwrap_or("?")
                .to_owned();
            let token = if user == "api" {
                SERVICE_TOKEN
            } else {
                USER_TOKEN
            };
            (
                "201 Created",
                vec![("X-Subject-Token", token.to_owned())],
                json(
                    serde_json::json!({"token": {"user": {"name": user}, "expires_at": "2030-01-01T00:00:00Z", "roles": [{"name": "member"}]}}),
                ),
            )
        }
        ("GET", "/v3/auth/tokens") => match req.header("X-Subject-Token") {
            Some(USER_TOKEN) => (
                "200 OK",
                vec![("X-Subject-Token", USER_TOKEN.to_owned())],
                json(serde_json::json!({"token": {"user": {"name": "demo"}}})),
            ),
            _ => (
                "404 Not Found",
                vec![],
                json(serde_json::json!({"error": "no such token"})),
            ),
        },
        _ => (
            "404 Not Found",
            vec![],
            json(serde_json::json!({"error": "not found"})),
        ),
    }
}

fn store(items: &Mutex<BTreeMap<String, serde_json::Value>>, req: &Message) -> Reply {
    let mut items = items
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let (method, target) = req.request_line();
    let path = target.split('?').next().unwrap_or("");
    match (method, path.strip_prefix("/items")) {
        ("GET", Some("")) => (
            "200 OK",
            vec![],
            json(serde_json::json!({"items": items.values().cloned().collect::<Vec<_>>()})),
        ),
        ("PUT", Some(id)) if id.len() > 1 => {
            let mut v: serde_json::Value = serde_json::from_slice(&req.body).unwrap_or_default();
            v["id"] = serde_json::Value::String(id[1..].to_owned());
            items.insert(id[1..].to_owned(), v);
            ("204 No Content", vec![], String::new())
        }
        ("GET", Some(id)) if id.len() > 1 => match items.get(&id[1..]) {
            Some(v) => ("200 OK", vec![], json(serde_json::json!({"item": v}))),
            None => (
                "404 Not Found",
                vec![],
                json(serde_json::json!({"error": "no such item"})),
            ),
        },
        _ => (
            "404 Not Found",
            vec![],
            json(serde_json::json!({"error": "not found"})),
        ),
    }
}

fn password_body(user: &str) -> Vec<u8> {
    serde_json::json!({"auth": {"identity": {"methods": ["password"], "password": {"user": {"name": user, "password": PASSWORD}}}}})
        .to_string()
        .into_bytes()
}

/// api: keep-alive connections to auth and store, shared by its connection threads.
struct Api {
    auth: Mutex<Client>,
    store: Mutex<Client>,
    service_token: Mutex<Option<String>>,
}

impl Api {
    fn handle(&self, req: &Message) -> io::Result<Reply> {
        let (method, target) = req.request_line();
        let Some(rest) = target.strip_prefix("/v1") else {
            return Ok((
                "404 Not Found",
                vec![],
                json(serde_json::json!({"error": "not found"})),
            ));
        };
        let mut auth = self
            .auth
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        // The first request needs the service's own token: discovery, then a password login.
        let mut service = self
            .service_token
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if service.is_none() {
            auth.call("GET", "/v3", &[], b"")?;
            let r = auth.call("POST", "/v3/auth/tokens", &[], &password_body("api"))?;
            *service = r.header("X-Subject-Token").map(str::to_owned);
        }
        let st = service.clone().unwrap_or_default();
        let user = req.header("X-Auth-Token").unwrap_or("").to_owned();
        let check = auth.call(
            "GET",
            "/v3/auth/tokens",
            &[("X-Auth-Token", &st), ("X-Subject-Token", &user)],
            b"",
        )?;
        drop(auth);
        if check.status() != 200 {
            return Ok((
                "401 Unauthorized",
                vec![],
                json(serde_json::json!({"error": "bad token"})),
            ));
        }
        let mut store = self
            .store
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let r = store.call(
            method,
            &format!("/items{}", rest.trim_start_matches("/items")),
            &[("X-Auth-Token", &st)],
            &req.body,
        )?;
        let status = match r.status() {
            200 => "200 OK",
            204 => "204 No Content",
            404 => "404 Not Found",
            _ => "502 Bad Gateway",
        };
        Ok((
            status,
            vec![],
            String::from_utf8_lossy(&r.body).into_owned(),
        ))
    }
}

fn client(auth_port: u16, api_port: u16) -> io::Result<()> {
    let mut auth = Client::connect(auth_port)?;
    auth.call("GET", "/v3", &[], b"")?;
    let r = auth.call("POST", "/v3/auth/tokens", &[], &password_body("demo"))?;
    let token = r.header("X-Subject-Token").unwrap_or("").to_owned();
    drop(auth);
    // One keep-alive connection for the three calls.
    let mut api = Client::connect(api_port)?;
    let t = [("X-Auth-Token", token.as_str())];
    let item = br#"{"name": "demo item", "size": 3}"#;
    for (method, target, body) in [
        ("PUT", "/v1/items/42", &item[..]),
        ("GET", "/v1/items?limit=2", &b""[..]),
        ("GET", "/v1/items/42", &b""[..]),
    ] {
        let r = api.call(method, target, &t, body)?;
        if r.status() >= 400 {
            return Err(io::Error::other(format!("{method} {target}: {}", r.start)));
        }
    }
    Ok(())
}

/// Runs one demo process.
pub fn run(a: &DemoPartArgs) -> io::Result<()> {
    let port = |i: usize| {
        a.calls
            .get(i)
            .copied()
            .ok_or_else(|| io::Error::other(format!("{} needs --call PORT", a.role)))
    };
    match a.role.as_str() {
        "auth" => serve(auth),
        "store" => {
            let items = Mutex::new(BTreeMap::new());
            serve(move |r| store(&items, r))
        }
        "api" => {
            let api = Api {
                auth: Mutex::new(Client::connect(port(0)?)?),
                store: Mutex::new(Client::connect(port(1)?)?),
                service_token: Mutex::new(None),
            };
            serve(move |r| {
                api.handle(r).unwrap_or_else(|e| {
                    (
                        "502 Bad Gateway",
                        vec![],
                        json(serde_json::json!({"error": e.to_string()})),
                    )
                })
            })
        }
        "client" => client(port(0)?, port(1)?),
        other => Err(io::Error::other(format!("no demo part {other}"))),
    }
}
