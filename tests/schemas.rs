//! The committed JSON Schemas in `schemas/`: up to date with the code, and usable by an editor's
//! JSON-Schema validator (through `all.json` and its file references, as yaml-language-server
//! follows them): every manifest of examples-repo passes, a misspelt field fails.

use std::path::{Path, PathBuf};

use serde_json::Value;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

#[test]
fn committed_schemas_are_up_to_date() {
    let dir = root().join("schemas");
    let mut stale = Vec::new();
    for (name, schema) in capstan_api::schema::all_files() {
        let expected = capstan_api::schema::render(&schema);
        match std::fs::read_to_string(dir.join(&name)) {
            Ok(actual) if actual == expected => {}
            _ => stale.push(name),
        }
    }
    assert!(
        stale.is_empty(),
        "stale schemas {stale:?}: run `cargo run -- schemas --out schemas` and commit the result"
    );
}

fn validator() -> jsonschema::Validator {
    let dir = root().join("schemas");
    let all: Value = serde_json::from_str(&std::fs::read_to_string(dir.join("all.json")).unwrap()).unwrap();
    jsonschema::options()
        .with_base_uri(format!("file://{}/all.json", dir.display()))
        .build(&all)
        .expect("all.json compiles, with its references")
}

/// Every document of a YAML file, read the way an editor reads it (plain YAML to JSON).
fn documents(path: &Path) -> Vec<Value> {
    let text = std::fs::read_to_string(path).unwrap();
    serde_saphyr::from_multiple::<Value>(&text)
        .unwrap()
        .into_iter()
        .filter(|d| !d.is_null())
        .collect()
}

fn yaml_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            yaml_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "yaml" || e == "yml") {
            out.push(path);
        }
    }
}

#[test]
fn every_example_manifest_passes_and_a_misspelt_field_fails() {
    let v = validator();
    let mut files = Vec::new();
    yaml_files(&root().join("examples-repo"), &mut files);
    assert!(files.len() >= 4, "examples-repo has manifests");
    let mut checked = 0;
    // A kustomization is kustomize's file, not an object: the schemas are not for it.
    files.retain(|f| f.file_name().is_some_and(|n| n != "kustomization.yaml"));
    for file in &files {
        for doc in documents(file) {
            let errors: Vec<String> = v.iter_errors(&doc).map(|e| format!("{} at {}", e, e.instance_path())).collect();
            assert!(errors.is_empty(), "{}: {errors:?}", file.display());
            checked += 1;
        }
    }
    assert!(checked >= 7);

    let mut deploy = documents(&root().join("examples-repo/guestbook/frontend.yaml")).remove(0);
    let container = &mut deploy["spec"]["template"]["spec"]["containers"][0];
    let image = container.as_object_mut().unwrap().remove("image").unwrap();
    container["imagee"] = image;
    assert!(!v.is_valid(&deploy), "a misspelt container field is refused");

    let mut cm = documents(&root().join("examples-repo/guestbook/config.yaml")).remove(0);
    cm["kind"] = Value::String("ConfigMapp".into());
    assert!(!v.is_valid(&cm), "an unknown kind is refused");
}
