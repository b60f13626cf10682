//! docs/openapi.json against the real `fanout dev`: every documented operation answers
//! with a status, headers and body the document lists for it (checked here without
//! Python), and schemathesis, fuzzing every operation from the document, finds no
//! answer that breaks it. Every record the api produced while fuzzed must then pass
//! ingest, which checks it with the same validator: any invalid input that slipped
//! through would show on ingest's dead-letter counter.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use bytes::Bytes;
use fanout_tests::DEADLINE;
use fanout_tests::api::{Answer, request};
use fanout_tests::process::{DEV_ON_FREE_PORTS, Fanout, FanoutProcess, http_get, temp_dir};
use fanout_tests::schemathesis::schemathesis_binary;
use serde_json::{Value, json};

/// The document the api serves (it includes the very same file).
const DOC: &str = include_str!("../../../docs/openapi.json");
const API_KEY: &str = "fuzz-api-key-0123456789abcdef";
/// How long one schemathesis run may take before the test fails (it takes seconds).
const SCHEMATHESIS_DEADLINE: Duration = Duration::from_secs(600);

fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// The `fanout` binary cargo built for these tests.
fn fanout() -> Fanout {
    Fanout(env!("CARGO_BIN_EXE_fanout"))
}

/// `fanout dev` on free ports, as the facts of its `--info-file` describe it.
struct Dev {
    process: FanoutProcess,
    api: SocketAddr,
    /// `host:port` of the admin port.
    admin: String,
    partner: String,
    /// The directory of the test's own files.
    dir: PathBuf,
}

impl Dev {
    async fn start(name: &str) -> Self {
        let dir = temp_dir(name);
        let info_file = dir.join("dev.json");
        let info_arg = info_file.to_str().unwrap().to_owned();
        let mut args = DEV_ON_FREE_PORTS.to_vec();
        args.extend([
            "--api-key",
            API_KEY,
            "--partitions",
            "2",
            "--info-file",
            &info_arg,
        ]);
        let mut process = fanout().start(&args, &[]);
        // Written once the edge and the api are ready.
        let deadline = tokio::time::Instant::now() + DEADLINE;
        let info: Value = loop {
            if let Ok(text) = std::fs::read_to_string(&info_file)
                && let Ok(info) = serde_json::from_str(&text)
            {
                break info;
            }
            process.assert_running();
            assert!(
                tokio::time::Instant::now() < deadline,
                "{} wrote no info file: {}",
                process.name(),
                process.logs_text()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        let address = |key: &str| {
            info[key]
                .as_str()
                .and_then(|url| url.strip_prefix("http://"))
                .unwrap_or_else(|| panic!("no {key} in {info}"))
                .to_owned()
        };
        assert_eq!(info["api_key"], API_KEY);
        Self {
            api: address("api_url").parse().unwrap(),
            admin: address("admin_url"),
            partner: info["partner"].as_str().unwrap().to_owned(),
            process,
            dir,
        }
    }

    /// Every sample of the metric `name` on the admin port: `(labels, value)`.
    async fn metric(&self, name: &str) -> Vec<(String, f64)> {
        let (status, body) = http_get(&self.admin, "/metrics")
            .await
            .expect("the admin port answered no /metrics");
        assert_eq!(status, 200, "{body}");
        body.lines()
            .filter(|line| !line.starts_with('#'))
            .filter_map(|line| {
                let (series, value) = line.rsplit_once(' ')?;
                let labels = match series.split_once('{') {
                    Some((metric, labels)) if metric == name => labels.trim_end_matches('}'),
                    None if series == name => "",
                    _ => return None,
                };
                Some((labels.to_owned(), value.parse().ok()?))
            })
            .collect()
    }

    async fn metric_sum(&self, name: &str, labels: &str) -> f64 {
        self.metric(name)
            .await
            .iter()
            .filter(|(series, _)| series.contains(labels))
            .map(|(_, value)| value)
            .sum()
    }

    async fn stop(mut self) {
        self.process.signal("TERM");
        let status = self.process.wait_exit().await;
        assert!(status.success(), "{}", self.process.logs_text());
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn document() -> Value {
    serde_json::from_str(DOC).expect("docs/openapi.json is JSON")
}

/// What a `$ref` (`#/a/b`) of the document points at.
fn resolve<'a>(doc: &'a Value, node: &'a Value) -> &'a Value {
    match node["$ref"].as_str() {
        Some(reference) => {
            let pointer = reference
                .strip_prefix('#')
                .unwrap_or_else(|| panic!("not a local $ref: {reference}"));
            let target = doc
                .pointer(pointer)
                .unwrap_or_else(|| panic!("dangling $ref {reference}"));
            resolve(doc, target)
        }
        None => node,
    }
}

/// Checks `value` against `schema` (the JSON Schema subset the document's responses
/// use; `pattern` aside), naming where it fails.
fn conforms(doc: &Value, schema: &Value, value: &Value, at: &str) -> Result<(), String> {
    let schema = resolve(doc, schema);
    if value.is_null() && schema["nullable"] == true {
        return Ok(());
    }
    if let Some(all) = schema["allOf"].as_array() {
        for part in all {
            conforms(doc, part, value, at)?;
        }
    }
    if let Some(one) = schema["oneOf"].as_array() {
        let matching = one
            .iter()
            .filter(|part| conforms(doc, part, value, at).is_ok())
            .count();
        if matching != 1 {
            return Err(format!(
                "{at}: {value} matches {matching} of the oneOf, not 1"
            ));
        }
    }
    if let Some(allowed) = schema["enum"].as_array()
        && !allowed.contains(value)
    {
        return Err(format!("{at}: {value} is none of {allowed:?}"));
    }
    let fits = match schema["type"].as_str() {
        None => true,
        Some("object") => value.is_object(),
        Some("array") => value.is_array(),
        Some("string") => value.is_string(),
        Some("integer") => value.is_i64() || value.is_u64(),
        Some("number") => value.is_number(),
        Some("boolean") => value.is_boolean(),
        Some(other) => return Err(format!("{at}: unknown type {other}")),
    };
    if !fits {
        return Err(format!("{at}: {value} is not of type {}", schema["type"]));
    }
    if let Some(object) = value.as_object() {
        let properties = schema["properties"].as_object();
        for required in schema["required"].as_array().into_iter().flatten() {
            let name = required.as_str().unwrap();
            if !object.contains_key(name) {
                return Err(format!("{at}: {name} is missing"));
            }
        }
        for (name, field) in object {
            match properties.and_then(|properties| properties.get(name)) {
                Some(property) => conforms(doc, property, field, &format!("{at}.{name}"))?,
                None if schema["additionalProperties"] == false => {
                    return Err(format!("{at}: {name} is not a documented property"));
                }
                None => {}
            }
        }
    }
    if let Some(items) = value.as_array() {
        let count = items.len() as u64;
        if schema["minItems"].as_u64().is_some_and(|min| count < min)
            || schema["maxItems"].as_u64().is_some_and(|max| count > max)
        {
            return Err(format!("{at}: {count} items is out of bounds"));
        }
        if !schema["items"].is_null() {
            for (index, item) in items.iter().enumerate() {
                conforms(doc, &schema["items"], item, &format!("{at}[{index}]"))?;
            }
        }
    }
    if let Some(number) = value
        .as_i64()
        .map(i128::from)
        .or(value.as_u64().map(i128::from))
    {
        let bound = |key: &str| {
            schema[key]
                .as_i64()
                .map(i128::from)
                .or(schema[key].as_u64().map(i128::from))
        };
        if bound("minimum").is_some_and(|min| number < min)
            || bound("maximum").is_some_and(|max| number > max)
        {
            return Err(format!("{at}: {number} is out of bounds"));
        }
    }
    if let Some(text) = value.as_str() {
        let length = text.chars().count() as u64;
        if schema["minLength"].as_u64().is_some_and(|min| length < min)
            || schema["maxLength"].as_u64().is_some_and(|max| length > max)
        {
            return Err(format!("{at}: {text:?} is out of length bounds"));
        }
    }
    Ok(())
}

/// Checks that `answer` is one the document lists in `responses` (an operation's, or
/// one response given as `{"<status>": response}`): its status, its required headers,
/// its JSON body.
fn assert_documented(doc: &Value, responses: &Value, answer: &Answer, request: &str) {
    let status = answer.status.to_string();
    let response = resolve(
        doc,
        responses.get(&status).unwrap_or_else(|| {
            panic!(
                "{request} answered {status}, which the document does not list: {}",
                answer.text
            )
        }),
    );
    for (name, header) in response["headers"].as_object().into_iter().flatten() {
        let header = resolve(doc, header);
        match answer.header(name) {
            Some(value) => {
                let value = match header["schema"]["type"].as_str() {
                    Some("integer") => value
                        .parse::<i64>()
                        .map(Value::from)
                        .unwrap_or_else(|_| panic!("{request}: header {name}: {value:?}")),
                    _ => Value::from(value),
                };
                if let Err(error) = conforms(doc, &header["schema"], &value, name) {
                    panic!("{request}: header {error}");
                }
            }
            None => assert!(
                header["required"] != true,
                "{request} answered {status} without its header {name}"
            ),
        }
    }
    let Some(content) = response["content"].as_object() else {
        assert!(answer.text.is_empty(), "{request}: an undocumented body");
        return;
    };
    let content_type = answer.header("content-type").unwrap_or_default();
    let media = content
        .get(content_type)
        .unwrap_or_else(|| panic!("{request} answered {status} as {content_type:?}"));
    if let Err(error) = conforms(doc, &media["schema"], &answer.body, "body") {
        panic!("{request} answered {status}: {error}\n{}", answer.text);
    }
}

/// `path` with each `{parameter}` set to a valid value.
fn concrete(path: &str) -> String {
    path.replace("{user}", "bob")
        .replace("{conversation_id}", "c1")
        .replace("{seq}", "1")
}

/// Each documented operation answers without a key (401, or 200 for the document
/// itself) and with the key and a valid minimal request (200), as the document lists;
/// a documented path with another method answers 405 and an undocumented path 404, as
/// its components describe them. The api serves the document itself.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_operation_answers_as_the_document_says() {
    let doc = document();
    let dev = Dev::start("api-conformance").await;
    let api = dev.api;

    let served = request(api, "GET", "/v1/openapi.json", None, None, Bytes::new()).await;
    assert_eq!(served.status, 200);
    assert_eq!(served.body, doc, "the api serves docs/openapi.json");

    let mut operations = 0;
    for (path, item) in doc["paths"].as_object().unwrap() {
        let target = concrete(path);
        let methods: Vec<&String> = item.as_object().unwrap().keys().collect();
        for method in &methods {
            let operation = &item[method.as_str()];
            let responses = &operation["responses"];
            let (content_type, body) = match &operation["requestBody"] {
                Value::Null => (None, String::new()),
                request_body => {
                    let media = &resolve(&doc, request_body)["content"]["application/json"];
                    let example = &media["examples"]["one"]["value"];
                    assert_eq!(
                        example["partner"], dev.partner,
                        "the example is for the dev partner"
                    );
                    (Some("application/json"), example.to_string())
                }
            };
            let method = method.to_uppercase();
            let public = operation["security"] == json!([]);
            for key in [None, Some(API_KEY)] {
                let name = format!(
                    "{method} {target} {}",
                    if key.is_some() {
                        "with a key"
                    } else {
                        "without a key"
                    }
                );
                let answer = request(api, &method, &target, key, content_type, body.clone()).await;
                assert_documented(&doc, responses, &answer, &name);
                let expected = if key.is_none() && !public { 401 } else { 200 };
                assert_eq!(answer.status, expected, "{name}: {}", answer.text);
            }
            operations += 1;
        }
        // A method the path does not take.
        let other = if methods.iter().any(|method| *method == "post") {
            "PUT"
        } else {
            "DELETE"
        };
        let answer = request(api, other, &target, Some(API_KEY), None, Bytes::new()).await;
        let name = format!("{other} {target}");
        let method_not_allowed =
            json!({ "405": doc["components"]["responses"]["MethodNotAllowed"] });
        assert_documented(&doc, &method_not_allowed, &answer, &name);
        let mut allowed: Vec<String> = answer
            .header("allow")
            .unwrap()
            .split(',')
            .map(|method| method.trim().to_lowercase())
            .filter(|method| method != "head")
            .collect();
        allowed.sort();
        let mut documented: Vec<String> = methods.iter().map(|method| method.to_string()).collect();
        documented.sort();
        assert_eq!(
            allowed, documented,
            "{name}: Allow lists the documented methods"
        );
    }
    assert_eq!(operations, 5, "every route of crates/api/src/http.rs");

    let not_found = json!({ "404": doc["components"]["responses"]["NotFound"] });
    for path in [
        "/",
        "/v1",
        "/v2/events",
        "/v1/users/bob",
        "/v1/openapi.yaml",
    ] {
        for key in [None, Some(API_KEY)] {
            let answer = request(api, "GET", path, key, None, Bytes::new()).await;
            assert_documented(&doc, &not_found, &answer, &format!("GET {path}"));
            assert_eq!(answer.code(), "not_found");
        }
    }
    dev.stop().await;
}

/// Runs schemathesis in `dir` with `args`; it must find nothing.
async fn schemathesis(binary: &Path, dir: &Path, args: &[&str]) {
    let mut command = tokio::process::Command::new(binary);
    command
        .args(args)
        .current_dir(dir)
        .env("NO_COLOR", "1")
        // Requests go to loopback only.
        .env("NO_PROXY", "*")
        .env_remove("HTTP_PROXY")
        .env_remove("HTTPS_PROXY")
        .env_remove("http_proxy")
        .env_remove("https_proxy")
        .stdin(Stdio::null())
        .kill_on_drop(true);
    let output = tokio::time::timeout(SCHEMATHESIS_DEADLINE, command.output())
        .await
        .expect("schemathesis did not finish before the deadline")
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "schemathesis {args:?} found the api breaking docs/openapi.json ({}):\n{stdout}\n{}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    let summary = stdout.lines().rev().take(4).collect::<Vec<_>>();
    eprintln!("schemathesis {args:?}: {:?}", summary);
}

/// The checks' settings for what the document cannot say in JSON Schema: a schema-valid
/// event may still be rejected for its content (422: a partner that is not the key's,
/// recipients that are only the sender, ids over 256 *bytes*, a seq past 2^53 as a
/// string), and a refusal of schema-violating data may be 413 (a batch over 500).
/// Deterministic: the same cases every run. A warning that means part of the document
/// went untested (a regex it cannot generate from, a `$ref` it cannot resolve, requests
/// answered 429 or 401) fails the run; `validation_mismatch` does not (most generated
/// events are another partner's, which the second run is for).
const SCHEMATHESIS_CONFIG: &str = r#"
[warnings]
fail-on = ["missing_auth", "base_url_mismatch", "missing_deserializer", "unused_openapi_auth", "unsupported_regex", "method_not_allowed", "unresolvable_reference", "rate_limited"]

[generation]
deterministic = true
database = "none"

[checks.negative_data_rejection]
expected-statuses = ["400", "401", "403", "404", "405", "406", "409", "413", "415", "422", "428", "429"]

[[operations]]
include-path = "/v1/events"
checks.positive_data_acceptance.expected-statuses = ["200", "422"]
"#;

/// schemathesis fuzzes every operation of docs/openapi.json against `fanout dev` with
/// every check it has (server errors, status codes, content types, headers and bodies
/// against their schemas, schema-violating requests refused, schema-valid ones
/// accepted, auth not ignored, other methods 405 with `Allow`), then fuzzes
/// `POST /v1/events` again with events of the key's own partner, so that many are
/// published. Ingest must then have dead-lettered none of the records the api produced.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn schemathesis_finds_no_departure_from_the_document_and_no_invalid_record() {
    let binary = tokio::task::spawn_blocking(schemathesis_binary)
        .await
        .unwrap();
    let dev = Dev::start("api-fuzz").await;
    let config = dev.dir.join("schemathesis.toml");
    std::fs::write(&config, SCHEMATHESIS_CONFIG).unwrap();
    // The document with `partner` narrowed to the key's: generated events then pass the
    // partner check, reach Kafka, and are checked by ingest.
    let mut own_partner = document();
    own_partner["components"]["schemas"]["MessageEvent"]["properties"]["partner"] =
        json!({ "type": "string", "enum": [dev.partner] });
    let own_partner_doc = dev.dir.join("openapi-own-partner.json");
    std::fs::write(&own_partner_doc, own_partner.to_string()).unwrap();

    let url = format!("http://{}", dev.api);
    let authorization = format!("Authorization: Bearer {API_KEY}");
    let doc = repo_root().join("docs/openapi.json");
    let started = Instant::now();
    let common = |doc: &Path, examples: &'static str| -> Vec<String> {
        [
            "--config-file",
            config.to_str().unwrap(),
            "run",
            doc.to_str().unwrap(),
            "--url",
            &url,
            "--header",
            &authorization,
            "--checks",
            "all",
            "--max-examples",
            examples,
            "--output-truncate",
            "true",
        ]
        .map(str::to_owned)
        .to_vec()
    };
    let run = common(&doc, "100");
    schemathesis(
        &binary,
        &dev.dir,
        &run.iter().map(String::as_str).collect::<Vec<_>>(),
    )
    .await;
    let mut run = common(&own_partner_doc, "300");
    run.extend(["--include-path".to_owned(), "/v1/events".to_owned()]);
    schemathesis(
        &binary,
        &dev.dir,
        &run.iter().map(String::as_str).collect::<Vec<_>>(),
    )
    .await;
    eprintln!("schemathesis ran for {:?}", started.elapsed());

    let accepted = dev
        .metric_sum("fanout_api_events_total", r#"result="accepted""#)
        .await;
    let rejected = dev
        .metric_sum("fanout_api_events_total", r#"result="rejected""#)
        .await;
    assert!(accepted > 0.0, "no fuzzed event was published");
    assert!(rejected > 0.0, "no fuzzed event was rejected");
    // Ingest reads every record the api produced (nothing else produces in dev).
    let deadline = tokio::time::Instant::now() + DEADLINE;
    while dev.metric_sum("fanout_ingest_events_total", "").await < accepted {
        assert!(
            tokio::time::Instant::now() < deadline,
            "ingest never read the {accepted} records the api produced"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let dead_letters = dev.metric("fanout_ingest_dead_letters_total").await;
    assert!(!dead_letters.is_empty(), "no dead-letter counter");
    let invalid: Vec<_> = dead_letters
        .iter()
        .filter(|(_, count)| *count != 0.0)
        .collect();
    assert!(
        invalid.is_empty(),
        "the api produced records ingest refused: {invalid:?}; see the dead-letter topic"
    );
    eprintln!("{accepted} fuzzed events published, {rejected} rejected, none dead-lettered");
    dev.stop().await;
}
