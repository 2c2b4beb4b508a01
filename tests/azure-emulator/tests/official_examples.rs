//! The official Azure REST example payloads (tests/examples/, copied from the Azure REST API
//! specs, see SOURCES.md): each example request goes through the emulator and the response has
//! the example response's shape.

use podid_azure_emulator::{Emulator, IdentitySeed, Seed, Settings};
use serde_json::{Value, json};

fn example(name: &str) -> Value {
    let path = format!("{}/tests/examples/{name}", env!("CARGO_MANIFEST_DIR"));
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

struct Arm {
    http: reqwest::Client,
    base: String,
    token: String,
}

impl Arm {
    async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<&Value>,
    ) -> (u16, Value) {
        let mut r = self
            .http
            .request(method, format!("{}{path}", self.base))
            .bearer_auth(&self.token);
        if let Some(b) = body {
            r = r.json(b);
        }
        let resp = r.send().await.unwrap();
        let status = resp.status().as_u16();
        let text = resp.text().await.unwrap();
        (
            status,
            if text.is_empty() {
                Value::Null
            } else {
                serde_json::from_str(&text).unwrap()
            },
        )
    }
}

async fn setup() -> (Emulator, Arm) {
    let emu = Emulator::start(Settings {
        lro_polls: 0,
        ..Default::default()
    })
    .await
    .unwrap();
    let arm = Arm {
        http: reqwest::Client::new(),
        base: emu.arm_endpoint(),
        token: emu.arm_token("examples"),
    };
    (emu, arm)
}

#[tokio::test]
async fn federated_identity_credential_examples() {
    let (emu, arm) = setup().await;
    let sub = emu.subscription_id();
    emu.seed(&Seed {
        identities: vec![IdentitySeed {
            resource_group: "rgName".into(),
            name: "resourceName".into(),
            ..Default::default()
        }],
        ..Default::default()
    })
    .unwrap();
    let create = example("FederatedIdentityCredentialCreate.json");
    let p = &create["parameters"];
    let path = format!(
        "/subscriptions/{sub}/resourceGroups/{}/providers/Microsoft.ManagedIdentity/userAssignedIdentities/{}/federatedIdentityCredentials/{}?api-version={}",
        p["resourceGroupName"].as_str().unwrap(),
        p["resourceName"].as_str().unwrap(),
        p["federatedIdentityCredentialResourceName"]
            .as_str()
            .unwrap(),
        p["api-version"].as_str().unwrap()
    );
    for (expected_status, round) in [(201, "201"), (200, "200")] {
        let (status, body) = arm
            .call(reqwest::Method::PUT, &path, Some(&p["parameters"]))
            .await;
        assert_eq!(status, expected_status, "{body}");
        let want = &create["responses"][round]["body"];
        assert_eq!(body["name"], want["name"]);
        assert_eq!(body["type"], want["type"]);
        assert_eq!(body["properties"], want["properties"]);
        assert!(
            body["id"]
                .as_str()
                .unwrap()
                .to_lowercase()
                .ends_with("/federatedidentitycredentials/ficresourcename")
        );
    }
    let get = example("FederatedIdentityCredentialGet.json");
    let (status, body) = arm.call(reqwest::Method::GET, &path, None).await;
    assert_eq!(status, 200);
    assert_eq!(
        body["properties"],
        get["responses"]["200"]["body"]["properties"]
    );
    let list = example("FederatedIdentityCredentialList.json");
    let list_path = path.replace(
        "/federatedIdentityCredentials/ficResourceName",
        "/federatedIdentityCredentials",
    );
    let (status, body) = arm.call(reqwest::Method::GET, &list_path, None).await;
    assert_eq!(status, 200);
    let want = &list["responses"]["200"]["body"]["value"][0];
    assert_eq!(body["value"][0]["properties"], want["properties"]);
    assert_eq!(body["value"][0]["type"], want["type"]);
    let delete = example("FederatedIdentityCredentialDelete.json");
    assert!(delete["responses"]["200"].is_object() && delete["responses"]["204"].is_object());
    assert_eq!(arm.call(reqwest::Method::DELETE, &path, None).await.0, 200);
    assert_eq!(arm.call(reqwest::Method::DELETE, &path, None).await.0, 204);
}

#[tokio::test]
async fn identity_get_example() {
    let (emu, arm) = setup().await;
    let ex = example("IdentityGet.json");
    let want = &ex["responses"]["200"]["body"];
    emu.seed(&Seed {
        identities: vec![IdentitySeed {
            resource_group: "rgName".into(),
            name: "identityName".into(),
            client_id: want["properties"]["clientId"].as_str().map(str::to_string),
            principal_id: want["properties"]["principalId"]
                .as_str()
                .map(str::to_string),
        }],
        ..Default::default()
    })
    .unwrap();
    let (status, body) = arm
        .call(reqwest::Method::GET, &format!("/subscriptions/{}/resourceGroups/rgName/providers/Microsoft.ManagedIdentity/userAssignedIdentities/identityName?api-version=2023-01-31", emu.subscription_id()), None)
        .await;
    assert_eq!(status, 200, "{body}");
    for k in ["name", "type", "location"] {
        assert_eq!(body[k], want[k], "{k}");
    }
    assert_eq!(
        body["properties"]["clientId"],
        want["properties"]["clientId"]
    );
    assert_eq!(
        body["properties"]["principalId"],
        want["properties"]["principalId"]
    );
    assert!(body["properties"]["tenantId"].is_string());
}

#[tokio::test]
async fn vmss_update_example() {
    let (emu, arm) = setup().await;
    let ex = example("VirtualMachineScaleSet_Update_MaximumSet_Gen.json");
    let p = &ex["parameters"];
    let rg = p["resourceGroupName"].as_str().unwrap();
    let name = p["vmScaleSetName"].as_str().unwrap();
    emu.add_scale_set(rg, name, 3);
    let id = emu.add_identity(rg, "key3951");
    // The example's identity key ("key3951") and type are generated placeholders (SOURCES.md);
    // a real request names an identity's ARM id and a type that includes UserAssigned.
    let mut body = p["parameters"].clone();
    body["identity"] = json!({"type": "SystemAssigned, UserAssigned", "userAssignedIdentities": {id.id.clone(): {}}});
    let path = format!(
        "/subscriptions/{}/resourceGroups/{rg}/providers/Microsoft.Compute/virtualMachineScaleSets/{name}?api-version={}",
        emu.subscription_id(),
        p["api-version"].as_str().unwrap()
    );
    let (status, resp) = arm.call(reqwest::Method::PATCH, &path, Some(&body)).await;
    assert_eq!(status, 200, "{resp}");
    let want = &ex["responses"]["200"]["body"];
    for k in [
        "id",
        "name",
        "type",
        "location",
        "sku",
        "properties",
        "identity",
        "tags",
    ] {
        assert!(
            resp.get(k).is_some() == want.get(k).is_some(),
            "field {k}: {resp}"
        );
    }
    assert_eq!(resp["sku"], p["parameters"]["sku"]);
    let entry = &resp["identity"]["userAssignedIdentities"][&id.id];
    assert_eq!(entry["clientId"], id.client_id, "{resp}");
    assert_eq!(entry["principalId"], id.principal_id);
    assert_eq!(resp["identity"]["type"], "SystemAssigned, UserAssigned");
    assert!(resp["identity"]["principalId"].is_string());
}

#[tokio::test]
async fn vm_create_with_identity_example() {
    let (emu, arm) = setup().await;
    let ex = example("VirtualMachine_Create_WithEncryptionIdentity.json");
    let p = &ex["parameters"];
    let id = emu.add_identity("myResourceGroup", "myIdentity");
    let mut body = p["parameters"].clone();
    let key = format!(
        "/subscriptions/{}/resourceGroups/myResourceGroup/providers/Microsoft.ManagedIdentity/userAssignedIdentities/myIdentity",
        emu.subscription_id()
    );
    body["identity"]["userAssignedIdentities"] = json!({key.clone(): {}});
    let path = format!(
        "/subscriptions/{}/resourceGroups/{}/providers/Microsoft.Compute/virtualMachines/{}?api-version={}",
        emu.subscription_id(),
        p["resourceGroupName"].as_str().unwrap(),
        p["vmName"].as_str().unwrap(),
        p["api-version"].as_str().unwrap()
    );
    let (status, resp) = arm.call(reqwest::Method::PUT, &path, Some(&body)).await;
    assert_eq!(status, 201, "{resp}");
    assert_eq!(
        resp["identity"]["type"],
        ex["responses"]["201"]["body"]["identity"]["type"]
    );
    assert_eq!(
        resp["identity"]["userAssignedIdentities"][&key]["clientId"],
        id.client_id
    );
    assert_eq!(
        resp["properties"]["hardwareProfile"],
        p["parameters"]["properties"]["hardwareProfile"]
    );
    let (status, _) = arm.call(reqwest::Method::PUT, &path, Some(&body)).await;
    assert_eq!(status, 200, "a second PUT updates");
}

#[tokio::test]
async fn imds_get_identity_token_example() {
    let (emu, _) = setup().await;
    let ex = example("getIdentityToken.json");
    let id = emu.add_identity("rg", "vault-reader");
    let vmss = emu.add_scale_set("MC_rg", "aks-nodepool1-12345678-vmss", 1);
    emu.preassign(&vmss, &id.id);
    let p = &ex["parameters"];
    let resp = reqwest::Client::new()
        .get(format!(
            "{}/metadata/identity/oauth2/token",
            emu.imds_endpoint("aks-nodepool1-12345678-vmss_0")
        ))
        .query(&[
            ("api-version", p["api-version"].as_str().unwrap()),
            ("resource", p["resource"].as_str().unwrap()),
        ])
        .header("Metadata", p["Metadata"].as_str().unwrap())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 200);
    let body: Value = resp.json().await.unwrap();
    let want = &ex["responses"]["200"]["body"];
    for (k, v) in want.as_object().unwrap() {
        assert!(
            v.is_string() && body[k].is_string(),
            "{k} must be a string as in the example: {body}"
        );
    }
    assert_eq!(body["client_id"], id.client_id);
    assert_eq!(body["resource"], p["resource"]);
    // The documented error shape, without the Metadata header.
    let resp = reqwest::Client::new()
        .get(format!(
            "{}/metadata/identity/oauth2/token",
            emu.imds_endpoint("aks-nodepool1-12345678-vmss_0")
        ))
        .query(&[
            ("api-version", "2018-02-01"),
            ("resource", "https://vault.azure.net"),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 400);
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["error"], ex["responses"]["400"]["body"]["error"]);
    assert!(body["error_description"].is_string());
}
