//! Who may do what, for which tenant, how often: bearer tokens (the RFC 8725 matrix of bad
//! tokens), scopes per route, tenant isolation through every read route and command, and rate
//! limits. Two instances of each API, real Kafka, real Cassandra, tokens signed with the stack's
//! development key (`infra/dev up`).

use std::time::Duration;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use ed25519_dalek::SigningKey;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{json, Value};
use tests::{
    client, read_topic, settings_with_fresh_topic, token, CommandApi, Keyspace, Projector,
    QueryApi, Reply,
};
use uuid::Uuid;

fn signing_key(settings: &infra::Settings) -> SigningKey {
    let jwks = std::path::Path::new(&settings.auth.jwks);
    infra::auth::dev::load_signing_key(&infra::auth::dev::signing_key_beside(jwks)).unwrap()
}

fn b64(bytes: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(bytes)
}

fn claims(settings: &infra::Settings) -> Value {
    infra::auth::dev::claims(
        settings,
        &settings.tenant,
        "mallory",
        &infra::auth::ALL_SCOPES,
        Duration::from_secs(600),
    )
}

/// Every kind of token RFC 8725 says must be refused, by name.
fn bad_tokens(settings: &infra::Settings) -> Vec<(&'static str, Option<String>)> {
    let key = signing_key(settings);
    let kid = infra::auth::dev::kid_of(&key);
    let sign = |claims: &Value| infra::auth::dev::sign(&key, claims).unwrap();
    let with = |edit: &dyn Fn(&mut Value)| {
        let mut c = claims(settings);
        edit(&mut c);
        sign(&c)
    };
    let now = chrono::Utc::now().timestamp();

    // alg none: a header and claims with an empty signature.
    let none = format!(
        "{}.{}.",
        b64(json!({"alg": "none", "typ": "JWT", "kid": kid})
            .to_string()
            .as_bytes()),
        b64(claims(settings).to_string().as_bytes())
    );
    // HS256 keyed with the public key (as the JWKS shows it, and as raw bytes).
    let mut hs = Header::new(Algorithm::HS256);
    hs.kid = Some(kid.clone());
    let public = key.verifying_key().to_bytes();
    let hs_with_x = jsonwebtoken::encode(
        &hs,
        &claims(settings),
        &EncodingKey::from_secret(b64(&public).as_bytes()),
    )
    .unwrap();
    let hs_with_raw =
        jsonwebtoken::encode(&hs, &claims(settings), &EncodingKey::from_secret(&public)).unwrap();
    // Unknown kid: signed by the right key, naming another.
    let mut unknown = Header::new(Algorithm::EdDSA);
    unknown.kid = Some("no-such-key".into());
    let der = {
        use ed25519_dalek::pkcs8::EncodePrivateKey;
        key.to_pkcs8_der().unwrap()
    };
    let unknown_kid = jsonwebtoken::encode(
        &unknown,
        &claims(settings),
        &EncodingKey::from_ed_der(der.as_bytes()),
    )
    .unwrap();
    // Tampered payload: a valid token whose claims now name another tenant.
    let valid = sign(&claims(settings));
    let parts: Vec<&str> = valid.split('.').collect();
    let mut other = claims(settings);
    other["tenant"] = json!("someone-else");
    let tampered = format!(
        "{}.{}.{}",
        parts[0],
        b64(other.to_string().as_bytes()),
        parts[2]
    );
    // Bad signature: another key, claiming to be the stack's.
    let stranger = SigningKey::from_bytes(&[7u8; 32]);
    let stranger_der = {
        use ed25519_dalek::pkcs8::EncodePrivateKey;
        stranger.to_pkcs8_der().unwrap()
    };
    let mut forged = Header::new(Algorithm::EdDSA);
    forged.kid = Some(kid.clone());
    let bad_signature = jsonwebtoken::encode(
        &forged,
        &claims(settings),
        &EncodingKey::from_ed_der(stranger_der.as_bytes()),
    )
    .unwrap();

    vec![
        ("no token", None),
        ("malformed header", Some("Bearer".to_string())),
        ("not bearer", Some(format!("Basic {}", b64(b"user:pass")))),
        ("two tokens", Some(format!("Bearer {valid} {valid}"))),
        ("not a JWT", Some("Bearer not.a.jwt".to_string())),
        ("alg none", Some(format!("Bearer {none}"))),
        (
            "HS256 keyed with the JWKS x",
            Some(format!("Bearer {hs_with_x}")),
        ),
        (
            "HS256 keyed with the public key",
            Some(format!("Bearer {hs_with_raw}")),
        ),
        (
            "expired",
            Some(format!(
                "Bearer {}",
                with(&|c| {
                    c["exp"] = json!(now - 3600);
                    c["iat"] = json!(now - 7200);
                    c["nbf"] = json!(now - 7200);
                })
            )),
        ),
        (
            "not yet valid",
            Some(format!(
                "Bearer {}",
                with(&|c| c["nbf"] = json!(now + 3600))
            )),
        ),
        (
            "wrong iss",
            Some(format!(
                "Bearer {}",
                with(&|c| c["iss"] = json!("https://elsewhere.example"))
            )),
        ),
        (
            "wrong aud",
            Some(format!(
                "Bearer {}",
                with(&|c| c["aud"] = json!("another-api"))
            )),
        ),
        (
            "no aud",
            Some(format!(
                "Bearer {}",
                with(&|c| {
                    c.as_object_mut().unwrap().remove("aud");
                })
            )),
        ),
        (
            "no tenant",
            Some(format!(
                "Bearer {}",
                with(&|c| {
                    c.as_object_mut().unwrap().remove("tenant");
                })
            )),
        ),
        ("unknown kid", Some(format!("Bearer {unknown_kid}"))),
        ("tampered payload", Some(format!("Bearer {tampered}"))),
        ("bad signature", Some(format!("Bearer {bad_signature}"))),
    ]
}

fn place_body(order: Uuid, customer: Uuid) -> Value {
    json!({"order_id": order, "customer_id": customer, "currency": "EUR",
           "items": [{"sku": "SEC-1", "quantity": 2, "unit_price_cents": 1250}]})
}

async fn send(
    http: &reqwest::Client,
    method: reqwest::Method,
    url: String,
    authorization: Option<&str>,
    body: Option<&Value>,
) -> Reply {
    let mut req = http.request(method, url);
    if let Some(a) = authorization {
        req = req.header("authorization", a);
    }
    if let Some(b) = body {
        req = req.json(b);
    }
    Reply::from(req.send().await.unwrap()).await.unwrap()
}

fn assert_unauthorized(reply: &Reply, what: &str) {
    assert_eq!(reply.status, 401, "{what}: {}", reply.body);
    let challenge = reply
        .headers
        .get("www-authenticate")
        .unwrap_or_else(|| panic!("{what}: no WWW-Authenticate: {}", reply.body))
        .to_str()
        .unwrap();
    assert!(
        challenge.starts_with("Bearer realm="),
        "{what}: {challenge}"
    );
    assert_eq!(
        reply.headers["content-type"], "application/problem+json",
        "{what}"
    );
    assert_eq!(reply.body["type"], "/problems/unauthorized", "{what}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_bad_token_of_rfc_8725_is_refused_401_by_both_apis() {
    let settings = settings_with_fresh_topic("auth-matrix").await.unwrap();
    let commands = [
        CommandApi::spawn(settings.clone()).await.unwrap(),
        CommandApi::spawn(settings.clone()).await.unwrap(),
    ];
    let queries = [
        QueryApi::spawn(&settings).await.unwrap(),
        QueryApi::spawn(&settings).await.unwrap(),
    ];
    let http = client();
    let order = Uuid::now_v7();
    let body = place_body(order, Uuid::now_v7());
    let cases = bad_tokens(&settings);
    assert!(cases.len() >= 11);
    for (i, (what, authorization)) in cases.iter().enumerate() {
        let command = &commands[i % 2];
        let reply = send(
            &http,
            reqwest::Method::POST,
            command.url("/v1/orders"),
            authorization.as_deref(),
            Some(&body),
        )
        .await;
        assert_unauthorized(&reply, &format!("command-api, {what}"));
        if authorization.is_none() {
            // RFC 6750 §3.1: no error code when no credentials came at all.
            assert!(!reply.headers["www-authenticate"]
                .to_str()
                .unwrap()
                .contains("error="));
        } else {
            assert!(reply.headers["www-authenticate"]
                .to_str()
                .unwrap()
                .contains("error=\"invalid_token\""));
        }
        for path in [
            format!("/v1/orders/{order}"),
            format!("/v1/orders/{order}/events"),
            "/v1/projections".to_string(),
        ] {
            let reply = send(
                &http,
                reqwest::Method::GET,
                queries[i % 2].url(&path),
                authorization.as_deref(),
                None,
            )
            .await;
            assert_unauthorized(&reply, &format!("query-api {path}, {what}"));
        }
    }
    // Nothing was written by any of them; the operational routes stay open.
    assert!(read_topic(&settings, &settings.kafka.topic)
        .await
        .unwrap()
        .is_empty());
    for api in commands.iter().map(|c| c.url("/healthz")) {
        assert_eq!(http.get(api).send().await.unwrap().status(), 200);
    }
    for q in &queries {
        for path in ["/healthz", "/metrics", "/openapi.json"] {
            assert_eq!(http.get(q.url(path)).send().await.unwrap().status(), 200);
        }
    }
    // And the good token works as before.
    let good = format!(
        "Bearer {}",
        token(&settings, &settings.tenant, &infra::auth::ALL_SCOPES).unwrap()
    );
    let reply = send(
        &http,
        reqwest::Method::POST,
        commands[0].url("/v1/orders"),
        Some(&good),
        Some(&body),
    )
    .await;
    assert_eq!(reply.status, 201, "{}", reply.body);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn each_missing_scope_is_refused_403_on_every_route_that_needs_it() {
    let settings = settings_with_fresh_topic("auth-scopes").await.unwrap();
    let command = CommandApi::spawn(settings.clone()).await.unwrap();
    let query = QueryApi::spawn(&settings).await.unwrap();
    let http = client();
    let order = command.place_order().await.unwrap();
    let customer = Uuid::now_v7();
    use reqwest::Method as M;
    let item = json!({"sku": "B", "quantity": 1, "unit_price_cents": 1});
    let routes: Vec<(&str, M, String, Option<Value>)> = vec![
        (
            infra::auth::ORDERS_WRITE,
            M::POST,
            command.url("/v1/orders"),
            Some(place_body(Uuid::now_v7(), customer)),
        ),
        (
            infra::auth::ORDERS_WRITE,
            M::POST,
            command.url(&format!("/v1/orders/{order}/items")),
            Some(item.clone()),
        ),
        (
            infra::auth::ORDERS_WRITE,
            M::DELETE,
            command.url(&format!("/v1/orders/{order}/items/FIRST")),
            None,
        ),
        (
            infra::auth::ORDERS_WRITE,
            M::POST,
            command.url(&format!("/v1/orders/{order}/payments")),
            Some(json!({"amount_cents": 100, "payment_ref": "p"})),
        ),
        (
            infra::auth::ORDERS_WRITE,
            M::POST,
            command.url(&format!("/v1/orders/{order}/shipments")),
            Some(json!({"carrier": "c", "tracking_number": "t"})),
        ),
        (
            infra::auth::ORDERS_WRITE,
            M::POST,
            command.url(&format!("/v1/orders/{order}/cancellation")),
            Some(json!({"reason": "r"})),
        ),
        (
            infra::auth::ORDERS_READ,
            M::GET,
            query.url(&format!("/v1/orders/{order}")),
            None,
        ),
        (
            infra::auth::ORDERS_READ,
            M::GET,
            query.url(&format!("/v1/customers/{customer}/orders")),
            None,
        ),
        (
            infra::auth::ORDERS_READ,
            M::GET,
            query.url("/v1/stats/sales?from=2026-01-01&to=2026-01-31"),
            None,
        ),
        (
            infra::auth::EVENTS_READ,
            M::GET,
            query.url(&format!("/v1/orders/{order}/events")),
            None,
        ),
        (infra::auth::OPS, M::GET, query.url("/v1/projections"), None),
    ];
    let before = read_topic(&settings, &settings.kafka.topic)
        .await
        .unwrap()
        .len();
    for missing in infra::auth::ALL_SCOPES {
        let granted: Vec<&str> = infra::auth::ALL_SCOPES
            .into_iter()
            .filter(|s| *s != missing)
            .collect();
        let bearer = format!(
            "Bearer {}",
            token(&settings, &settings.tenant, &granted).unwrap()
        );
        for (needs, method, url, body) in &routes {
            let reply = send(
                &http,
                method.clone(),
                url.clone(),
                Some(&bearer),
                body.as_ref(),
            )
            .await;
            if *needs == missing {
                assert_eq!(
                    reply.status, 403,
                    "{method} {url} without {missing}: {}",
                    reply.body
                );
                assert_eq!(reply.body["type"], "/problems/insufficient_scope");
                let challenge = reply.headers["www-authenticate"].to_str().unwrap();
                assert!(
                    challenge.contains("error=\"insufficient_scope\"")
                        && challenge.contains(&format!("scope=\"{needs}\"")),
                    "{challenge}"
                );
            } else {
                assert!(
                    ![401, 403].contains(&reply.status),
                    "{method} {url} with {needs} granted answered {}: {}",
                    reply.status,
                    reply.body
                );
            }
        }
    }
    // The refused commands wrote nothing; the granted ones did (payment 422: not the total).
    let after = read_topic(&settings, &settings.kafka.topic).await.unwrap();
    assert!(after.len() > before, "granted commands were applied");
    // A token with no scope at all reaches nothing.
    let nothing = format!(
        "Bearer {}",
        token(&settings, &settings.tenant, &[]).unwrap()
    );
    for (_, method, url, body) in &routes {
        let reply = send(
            &http,
            method.clone(),
            url.clone(),
            Some(&nothing),
            body.as_ref(),
        )
        .await;
        assert_eq!(reply.status, 403, "{method} {url} with no scope");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_tenant_never_reads_writes_or_infers_another_tenants_orders() {
    let mut settings = settings_with_fresh_topic("tenants").await.unwrap();
    let _ks = Keyspace::fresh(&mut settings).await.unwrap();
    let commands = [
        CommandApi::spawn(settings.clone()).await.unwrap(),
        CommandApi::spawn(settings.clone()).await.unwrap(),
    ];
    let _projectors = [Projector::spawn(&settings), Projector::spawn(&settings)];
    let queries = [
        QueryApi::spawn(&settings).await.unwrap(),
        QueryApi::spawn(&settings).await.unwrap(),
    ];
    queries[0]
        .wait_read_models(Duration::from_secs(60))
        .await
        .unwrap();
    let http = client();
    let tenant_a = settings.tenant.clone();
    let tenant_b = format!("{tenant_a}.b");
    let bearer = |tenant: &str| {
        format!(
            "Bearer {}",
            token(&settings, tenant, &infra::auth::ALL_SCOPES).unwrap()
        )
    };
    let (a, b) = (bearer(&tenant_a), bearer(&tenant_b));
    use reqwest::Method as M;

    // B places and pays an order of its customer; A places one of the same customer id.
    let (order_b, customer) = (Uuid::now_v7(), Uuid::now_v7());
    let placed = send(
        &http,
        M::POST,
        commands[0].url("/v1/orders"),
        Some(&b),
        Some(&place_body(order_b, customer)),
    )
    .await;
    assert_eq!(placed.status, 201, "{}", placed.body);
    let paid = send(
        &http,
        M::POST,
        commands[1].url(&format!("/v1/orders/{order_b}/payments")),
        Some(&b),
        Some(&json!({"amount_cents": 2500, "payment_ref": "b-pay"})),
    )
    .await;
    assert_eq!(paid.status, 200, "{}", paid.body);
    let order_a = Uuid::now_v7();
    let placed_a = send(
        &http,
        M::POST,
        commands[1].url("/v1/orders"),
        Some(&a),
        Some(&place_body(order_a, customer)),
    )
    .await;
    assert_eq!(placed_a.status, 201);

    // B sees its own order (read your writes), so the views hold it.
    let seen = send(
        &http,
        M::GET,
        queries[0].url(&format!("/v1/orders/{order_b}?min_version=2")),
        Some(&b),
        None,
    )
    .await;
    assert_eq!(seen.status, 200, "{}", seen.body);
    let seen_a = send(
        &http,
        M::GET,
        queries[1].url(&format!("/v1/orders/{order_a}?min_version=1")),
        Some(&a),
        None,
    )
    .await;
    assert_eq!(seen_a.status, 200, "{}", seen_a.body);

    // A, through both query-apis: B's order answers exactly as an unknown one.
    let unknown = Uuid::now_v7();
    for q in &queries {
        for (path_b, path_unknown) in [
            (
                format!("/v1/orders/{order_b}"),
                format!("/v1/orders/{unknown}"),
            ),
            (
                format!("/v1/orders/{order_b}?min_version=1&wait_ms=200"),
                format!("/v1/orders/{unknown}?min_version=1&wait_ms=200"),
            ),
            (
                format!("/v1/orders/{order_b}/events"),
                format!("/v1/orders/{unknown}/events"),
            ),
        ] {
            let r_b = send(&http, M::GET, q.url(&path_b), Some(&a), None).await;
            let r_u = send(&http, M::GET, q.url(&path_unknown), Some(&a), None).await;
            assert_eq!(r_b.status, 404, "{path_b}: {}", r_b.body);
            assert_eq!(r_b.status, r_u.status);
            assert_eq!(r_b.body["type"], r_u.body["type"]);
            assert_eq!(r_b.body["title"], r_u.body["title"]);
            assert_eq!(
                r_b.body["detail"]
                    .as_str()
                    .unwrap()
                    .replace(&order_b.to_string(), "X"),
                r_u.body["detail"]
                    .as_str()
                    .unwrap()
                    .replace(&unknown.to_string(), "X"),
                "the answers differ only by the id asked"
            );
        }
        // The customer's orders: A sees only its own, B only its own.
        let list_a = send(
            &http,
            M::GET,
            q.url(&format!("/v1/customers/{customer}/orders")),
            Some(&a),
            None,
        )
        .await;
        let ids_a: Vec<&str> = list_a.body["items"]
            .as_array()
            .unwrap()
            .iter()
            .map(|o| o["order_id"].as_str().unwrap())
            .collect();
        assert_eq!(ids_a, vec![order_a.to_string()], "{}", list_a.body);
        // Sales of today: B's payment counts for B only.
        let today = chrono::Utc::now().date_naive();
        let stats = |bearer: String| {
            let url = q.url(&format!("/v1/stats/sales?from={today}&to={today}"));
            let http = http.clone();
            async move { send(&http, M::GET, url, Some(&bearer), None).await }
        };
        let sales_b = stats(b.clone()).await;
        let sales_a = stats(a.clone()).await;
        assert_eq!(sales_a.status, 200);
        let revenue = |r: &Reply| -> i64 {
            r.body["days"]
                .as_array()
                .unwrap()
                .iter()
                .map(|d| d["revenue_cents"].as_i64().unwrap_or(0))
                .sum()
        };
        assert_eq!(revenue(&sales_a), 0, "{}", sales_a.body);
        // The projector may still be on B's payment: B's figure is checked to exist, not raced.
        assert_eq!(sales_b.status, 200);
    }

    // A's commands on B's order: 404, exactly as an unknown order, and nothing written.
    let topic_before = read_topic(&settings, &settings.kafka.topic).await.unwrap();
    for (path, body) in [
        (
            format!("/v1/orders/{order_b}/items"),
            Some(json!({"sku": "X", "quantity": 1, "unit_price_cents": 1})),
        ),
        (format!("/v1/orders/{order_b}/items/SEC-1"), None),
        (
            format!("/v1/orders/{order_b}/payments"),
            Some(json!({"amount_cents": 2500, "payment_ref": "a"})),
        ),
        (
            format!("/v1/orders/{order_b}/shipments"),
            Some(json!({"carrier": "c", "tracking_number": "t"})),
        ),
        (
            format!("/v1/orders/{order_b}/cancellation"),
            Some(json!({"reason": "mine now"})),
        ),
    ] {
        let method = if body.is_some() { M::POST } else { M::DELETE };
        for c in &commands {
            let r = send(&http, method.clone(), c.url(&path), Some(&a), body.as_ref()).await;
            assert_eq!(r.status, 404, "{path}: {}", r.body);
            assert_eq!(r.body["type"], "/problems/not-found");
        }
    }
    let topic_after = read_topic(&settings, &settings.kafka.topic).await.unwrap();
    assert_eq!(
        topic_before.len(),
        topic_after.len(),
        "A's refused commands wrote nothing"
    );
    // B's order is as B left it: version 2, paid.
    let still = send(
        &http,
        M::GET,
        queries[1].url(&format!("/v1/orders/{order_b}")),
        Some(&b),
        None,
    )
    .await;
    assert_eq!(still.status, 200);
    assert_eq!(still.body["version"], 2);
    assert_eq!(still.body["status"], "paid");
    // B's events carry B's tenant, A's carry A's.
    for record in &topic_after {
        let envelope: Value = serde_json::from_slice(&record.payload).unwrap();
        let expected = if envelope["aggregate_id"] == json!(order_b) {
            &tenant_b
        } else {
            &tenant_a
        };
        assert_eq!(envelope["tenant_id"], json!(expected));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_client_over_its_limit_gets_429_with_retry_after_then_succeeds_again() {
    let mut settings = settings_with_fresh_topic("ratelimit").await.unwrap();
    // One token a second: nothing refills between the requests below.
    settings.rate_limit.client_per_second = 1;
    settings.rate_limit.client_burst = 4;
    settings.rate_limit.tenant_per_second = 1;
    settings.rate_limit.tenant_burst = 6;
    let api = CommandApi::spawn(settings.clone()).await.unwrap();
    let http = client();
    let bearer = |subject: &str| {
        let token = infra::auth::dev::mint_for(
            &settings,
            &settings.tenant,
            subject,
            &infra::auth::ALL_SCOPES,
            Duration::from_secs(600),
        )
        .unwrap();
        format!("Bearer {token}")
    };
    // An invalid body: refused with 422 by the handler, so only the limits decide 429.
    let empty = json!({});
    let hit = |who: String| {
        let http = http.clone();
        let url = api.url("/v1/orders");
        let body = empty.clone();
        async move { send(&http, reqwest::Method::POST, url, Some(&who), Some(&body)).await }
    };
    // One client: its burst of 4 passes, the 5th is over its limit.
    let alice = bearer("alice");
    let mut statuses = Vec::new();
    let mut limited = None;
    for _ in 0..6 {
        let r = hit(alice.clone()).await;
        statuses.push(r.status);
        if r.status == 429 {
            limited.get_or_insert(r);
        } else {
            assert_eq!(r.status, 422, "{}", r.body);
            let policy = r.headers["ratelimit-policy"].to_str().unwrap();
            assert!(
                policy.contains("\"tenant\";q=1;w=1") && policy.contains("\"client\";q=1;w=1"),
                "{policy}"
            );
            assert!(r.headers.contains_key("ratelimit"));
        }
    }
    let limited = limited.unwrap_or_else(|| panic!("never limited: {statuses:?}"));
    assert_eq!(&statuses[..4], &[422, 422, 422, 422], "{statuses:?}");
    assert_eq!(limited.body["type"], "/problems/rate-limited");
    let retry: u64 = limited.headers["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=2).contains(&retry), "Retry-After {retry}");
    assert!(limited.headers["ratelimit"]
        .to_str()
        .unwrap()
        .starts_with("\"client\";r=0;t="));
    // Another client of the same tenant still has the tenant's 2 left, then the tenant limit.
    let bob = bearer("bob");
    assert_eq!(hit(bob.clone()).await.status, 422);
    assert_eq!(hit(bob.clone()).await.status, 422);
    let tenant_limited = hit(bob.clone()).await;
    assert_eq!(tenant_limited.status, 429);
    assert!(tenant_limited.headers["ratelimit"]
        .to_str()
        .unwrap()
        .starts_with("\"tenant\";r=0"));
    // After Retry-After, alice succeeds again.
    tokio::time::sleep(Duration::from_secs(retry) + Duration::from_millis(200)).await;
    let again = hit(alice).await;
    assert_eq!(again.status, 422, "{}", again.body);
}
