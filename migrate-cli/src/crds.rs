//! `podid crds`: podid's CustomResourceDefinitions for the cluster at hand, the variant its API
//! server's minor takes ([`podid_crds::crds_for`]), printed or applied.

use std::time::Duration;

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Patch, PatchParams};
use kube::runtime::wait::{await_condition, conditions};
use kube::{Api, Client};

use crate::Error;

/// Field manager of `podid crds apply`.
pub const CRDS_MANAGER: &str = "podid-crds";

/// The minor `version` names (`1.30`, `v1.30.4`, `30`), for `--kube-version`.
pub fn parse_kube_version(version: &str) -> Result<u32, Error> {
    let v = version.trim_start_matches('v');
    let minor = match v.split_once('.') {
        Some(("1", rest)) => rest.split('.').next().unwrap_or_default(),
        Some(_) => "",
        None => v,
    };
    match podid_crds::kube_minor(minor) {
        Some(m) if m >= podid_crds::OLDEST_KUBE_MINOR => Ok(m),
        Some(m) => Err(Error::Usage(format!(
            "--kube-version {version}: Kubernetes 1.{m} is older than podid supports (1.{} and later; docs/compatibility.md)",
            podid_crds::OLDEST_KUBE_MINOR
        ))),
        None => Err(Error::Usage(format!(
            "--kube-version {version}: expected a Kubernetes version such as 1.30 or v1.34.4"
        ))),
    }
}

/// The server's minor, refused when older than podid supports.
pub async fn server_minor(client: &Client) -> Result<(u32, String), Error> {
    let v = client.apiserver_version().await?;
    let minor = podid_crds::kube_minor(&v.minor).ok_or_else(|| {
        Error::Refused(format!(
            "the API server reports minor {:?} ({}): not a Kubernetes version podid knows",
            v.minor, v.git_version
        ))
    })?;
    if minor < podid_crds::OLDEST_KUBE_MINOR {
        return Err(Error::Refused(format!(
            "the API server is {}: podid supports Kubernetes 1.{} and later (docs/compatibility.md)",
            v.git_version,
            podid_crds::OLDEST_KUBE_MINOR
        )));
    }
    Ok((minor, v.git_version))
}

/// Applies the variant for the server (server-side, field manager [`CRDS_MANAGER`], forced as
/// `kubectl apply --server-side --force-conflicts` would) and waits until each is Established;
/// with `dry_run` a server-side dry run. Returns what was applied, one line per CRD.
pub async fn apply(client: &Client, dry_run: bool) -> Result<Vec<String>, Error> {
    let (minor, version) = server_minor(client).await?;
    let api: Api<CustomResourceDefinition> = Api::all(client.clone());
    let mut pp = PatchParams::apply(CRDS_MANAGER).force();
    pp.dry_run = dry_run;
    let mut out = Vec::new();
    for crd in podid_crds::crds_for(minor) {
        let name = crd.metadata.name.clone().unwrap_or_default();
        api.patch(&name, &pp, &Patch::Apply(&crd)).await?;
        if !dry_run {
            let established = await_condition(api.clone(), &name, conditions::is_crd_established());
            tokio::time::timeout(Duration::from_secs(60), established)
                .await
                .map_err(|_| Error::Refused(format!("CRD {name} not Established after 60s")))?
                .map_err(|e| Error::Refused(format!("waiting for CRD {name}: {e}")))?;
        }
        out.push(format!(
            "{name} {} (for {version})",
            if dry_run {
                "would be applied"
            } else {
                "applied"
            }
        ));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kube_versions_are_read_as_users_write_them() {
        for (v, m) in [("1.30", 30), ("v1.34.4", 34), ("1.37.2", 37), ("31", 31)] {
            assert_eq!(parse_kube_version(v).unwrap(), m, "{v}");
        }
        let e = parse_kube_version("1.29").unwrap_err().to_string();
        assert!(e.contains("older than podid supports (1.30"), "{e}");
        let e = parse_kube_version("two").unwrap_err().to_string();
        assert!(e.contains("--kube-version two: expected"), "{e}");
    }

    /// A client whose API server answers `/version` with `minor` and `git`.
    fn server(minor: &'static str, git: &'static str) -> Client {
        let svc = tower::service_fn(move |req: http::Request<kube::client::Body>| async move {
            assert_eq!(req.uri().path(), "/version");
            let body = serde_json::json!({
                "major": "1", "minor": minor, "gitVersion": git, "gitCommit": "", "gitTreeState": "",
                "buildDate": "", "goVersion": "", "compiler": "", "platform": "linux/amd64"
            });
            Ok::<_, std::convert::Infallible>(http::Response::new(kube::client::Body::from(
                serde_json::to_vec(&body).unwrap(),
            )))
        });
        Client::new(svc, "default")
    }

    #[tokio::test]
    async fn the_server_version_picks_the_variant_and_an_older_server_is_refused() {
        assert_eq!(server_minor(&server("30", "v1.30.14")).await.unwrap().0, 30);
        // Managed offerings report a `+` after the minor.
        assert_eq!(
            server_minor(&server("34+", "v1.34.4-eks")).await.unwrap().0,
            34
        );
        let e = server_minor(&server("29", "v1.29.9"))
            .await
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("v1.29.9")
                && e.contains("1.30 and later")
                && e.contains("docs/compatibility.md"),
            "{e}"
        );
        // Nothing is applied to a server podid does not support.
        let e = apply(&server("29", "v1.29.9"), true)
            .await
            .unwrap_err()
            .to_string();
        assert!(e.contains("1.30 and later"), "{e}");
        let e = server_minor(&server("x", "v1.x"))
            .await
            .unwrap_err()
            .to_string();
        assert!(e.contains("not a Kubernetes version podid knows"), "{e}");
    }
}
