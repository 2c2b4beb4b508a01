//! IMDS per emulated instance: tokens only for identities currently on the instance's scale set
//! or VM, the real error bodies otherwise, and `/metadata/instance`.

use std::collections::HashMap;

use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

use crate::server::{Ctx, unix_now};
use crate::state::{Machine, key};

fn bad(desc: &str) -> Response {
    (
        StatusCode::BAD_REQUEST,
        axum::Json(json!({"error": "invalid_request", "error_description": desc})),
    )
        .into_response()
}

/// The machine behind an instance name: `<scale set>_<instance id>` or a VM name.
fn resolve(ctx: &Ctx, instance: Option<&str>) -> Result<(Machine, String), Box<Response>> {
    let w = ctx.world.lock().expect("world");
    let instance = match instance {
        Some(i) => i.to_string(),
        None => {
            // Without a prefix: the only instance there is.
            let all: Vec<String> = w
                .machines
                .values()
                .flat_map(|m| {
                    if m.is_scale_set {
                        m.instances
                            .iter()
                            .map(|i| format!("{}_{i}", m.name))
                            .collect::<Vec<_>>()
                    } else {
                        vec![m.name.clone()]
                    }
                })
                .collect();
            match all.as_slice() {
                [one] => one.clone(),
                _ => return Err(Box::new((StatusCode::NOT_FOUND, axum::Json(json!({"error": "not_found", "error_description": "Several instances are emulated; call /instances/<scale set>_<instance id>/metadata/... (or /instances/<vm>/metadata/...)"}))).into_response())),
            }
        }
    };
    for m in w.machines.values() {
        if m.is_scale_set {
            if let Some((set, id)) = instance.rsplit_once('_')
                && set.eq_ignore_ascii_case(&m.name)
                && m.instances.iter().any(|i| i == id)
            {
                return Ok((m.clone(), instance));
            }
        } else if m.name.eq_ignore_ascii_case(&instance) {
            return Ok((m.clone(), instance));
        }
    }
    Err(Box::new((StatusCode::NOT_FOUND, axum::Json(json!({"error": "not_found", "error_description": format!("No emulated instance '{instance}'")}))).into_response()))
}

fn metadata_ok(headers: &HeaderMap) -> bool {
    headers
        .get("metadata")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case("true"))
}

async fn token(
    ctx: Ctx,
    instance: Option<String>,
    headers: HeaderMap,
    q: HashMap<String, String>,
) -> Response {
    if !metadata_ok(&headers) {
        return bad("Required metadata header not specified");
    }
    if !q.contains_key("api-version") {
        return bad("Required query variable 'api-version' is missing");
    }
    let Some(resource) = q.get("resource").filter(|r| !r.is_empty()).cloned() else {
        return bad("Required query variable 'resource' is missing");
    };
    let (machine, _) = match resolve(&ctx, instance.as_deref()) {
        Ok(m) => m,
        Err(r) => return *r,
    };
    let (identities, tenant) = {
        let w = ctx.world.lock().expect("world");
        let ids: Vec<_> = machine
            .identity
            .user_assigned
            .keys()
            .filter_map(|k| w.identities.get(k).cloned())
            .collect();
        (
            ids,
            ctx.settings.lock().expect("settings").tenant_id.clone(),
        )
    };
    let client_id = q.get("client_id");
    let object_id = q.get("object_id");
    let res_id = q.get("msi_res_id").or_else(|| q.get("mi_res_id"));
    // (client id, object id, resource id of a user-assigned identity)
    let chosen: Option<(String, String, Option<String>)> = if client_id.is_none()
        && object_id.is_none()
        && res_id.is_none()
    {
        if machine.identity.system_assigned {
            Some((
                machine.principal_id.clone(),
                machine.principal_id.clone(),
                None,
            ))
        } else {
            match identities.as_slice() {
                [] => None,
                [one] => Some((
                    one.client_id.clone(),
                    one.principal_id.clone(),
                    Some(one.id.clone()),
                )),
                _ => {
                    return bad(
                        "Multiple user assigned identities exist, please specify the clientId / resourceId of the identity in the token request",
                    );
                }
            }
        }
    } else {
        identities
            .iter()
            .find(|i| {
                client_id.is_some_and(|c| c.eq_ignore_ascii_case(&i.client_id))
                    || object_id.is_some_and(|o| o.eq_ignore_ascii_case(&i.principal_id))
                    || res_id.is_some_and(|r| key(r) == key(&i.id))
            })
            .map(|i| {
                (
                    i.client_id.clone(),
                    i.principal_id.clone(),
                    Some(i.id.clone()),
                )
            })
    };
    let Some((cid, oid, mirid)) = chosen else {
        return bad("Identity not found");
    };
    let now = unix_now();
    let exp = now + 3599;
    let mut claims = json!({
        "aud": resource, "iss": format!("https://sts.windows.net/{tenant}/"), "tid": tenant,
        "oid": oid, "sub": oid, "appid": cid, "appidacr": "2", "idtyp": "app", "ver": "1.0",
        "iat": now, "nbf": now, "exp": exp,
    });
    if let Some(m) = &mirid {
        claims["xms_mirid"] = json!(m);
    }
    let mut body = json!({
        "access_token": ctx.keys.sign(&claims), "refresh_token": "", "expires_in": "3599",
        "expires_on": exp.to_string(), "ext_expires_in": "3599", "not_before": now.to_string(),
        "resource": resource, "token_type": "Bearer", "client_id": cid,
    });
    if let Some(o) = object_id {
        body["object_id"] = json!(o);
    }
    if let Some(r) = res_id {
        body["msi_res_id"] = json!(r);
    }
    axum::Json(body).into_response()
}

async fn instance(
    ctx: Ctx,
    instance: Option<String>,
    headers: HeaderMap,
    q: HashMap<String, String>,
) -> Response {
    if !metadata_ok(&headers) {
        return bad("Required metadata header not specified");
    }
    if !q.contains_key("api-version") {
        return (StatusCode::BAD_REQUEST, axum::Json(json!({"error": "Bad request. api-version is invalid or was not specified in the request. For more information refer to aka.ms/azureimds", "newest-versions": ["2023-07-01", "2021-12-13", "2021-11-15"]}))).into_response();
    }
    let (m, name) = match resolve(&ctx, instance.as_deref()) {
        Ok(m) => m,
        Err(r) => return *r,
    };
    let parts: Vec<&str> = m.id.split('/').collect();
    let (sub, rg) = (
        parts.get(2).copied().unwrap_or(""),
        parts.get(4).copied().unwrap_or(""),
    );
    let compute: Value = json!({
        "azEnvironment": "AzurePublicCloud", "location": m.location, "name": name, "osType": "Linux",
        "resourceGroupName": rg, "subscriptionId": sub, "vmId": m.principal_id,
        "vmScaleSetName": if m.is_scale_set { m.name.as_str() } else { "" }, "vmSize": "Standard_DS2_v2", "zone": "",
        "resourceId": if m.is_scale_set { format!("{}/virtualMachines/{}", m.id, name.rsplit('_').next().unwrap_or("0")) } else { m.id.clone() },
        "tags": "", "tagsList": [],
    });
    axum::Json(json!({"compute": compute, "network": {"interface": [{"ipv4": {"ipAddress": [{"privateIpAddress": "127.0.0.1", "publicIpAddress": ""}], "subnet": [{"address": "127.0.0.0", "prefix": "8"}]}, "macAddress": "000D3A000000"}]}})).into_response()
}

pub async fn token_default(
    State(ctx): State<Ctx>,
    headers: HeaderMap,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    token(ctx, None, headers, q).await
}

pub async fn token_for(
    State(ctx): State<Ctx>,
    Path(i): Path<String>,
    headers: HeaderMap,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    token(ctx, Some(i), headers, q).await
}

pub async fn instance_default(
    State(ctx): State<Ctx>,
    headers: HeaderMap,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    instance(ctx, None, headers, q).await
}

pub async fn instance_for(
    State(ctx): State<Ctx>,
    Path(i): Path<String>,
    headers: HeaderMap,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    instance(ctx, Some(i), headers, q).await
}
