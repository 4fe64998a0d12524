// A real OpenID Connect provider (oidc-provider 9, in-memory storage) for Gatehouse's browser
// end-to-end tests. Loopback only.
//
//   PORT=0 CLIENT_SECRET=s3cret REDIRECT_URIS=http://127.0.0.1:4180/oauth2/callback \
//     POST_LOGOUT_URIS=http://127.0.0.1:4180/ node tests/e2e/provider.mjs
//
// Environment (all optional):
//   PORT              port on 127.0.0.1; 0 (default) picks a free one
//   CLIENT_SECRET     secret of the confidential client `gatehouse` (default "gatehouse-secret")
//   REDIRECT_URIS     comma list, for both clients (default http://127.0.0.1:4180/oauth2/callback)
//   POST_LOGOUT_URIS  comma list, for both clients (default http://127.0.0.1:4180/)
//   ACCESS_TTL        access token lifetime in seconds (default 300)
//   ID_TOKEN_CLAIMS   "1" (default): the ID token carries the claims of the granted scopes
//                     (email, name, groups…), so a relying party needs no userinfo call;
//                     "0": oidc-provider's conformant default (ID token has `sub` only when an
//                     access token is issued too; the rest comes from /me)
//   SERVICE_CLIENT_SECRET  secret of the machine client `gatehouse-service`
//                     (default "gatehouse-service-secret")
//   API_RESOURCE      the one resource indicator (RFC 8707) the provider knows (default
//                     "api://orders"); see "Machine tokens" below
//   REFRESH_TTL       refresh token lifetime in seconds (default 86400)
//   ROTATE_REFRESH    "1": every refresh_token grant rotates the refresh token (the presented
//                     one is consumed; presenting it again is reuse: oidc-provider then revokes
//                     the whole grant, "refresh token already used"). Default: oidc-provider's
//                     own policy (confidential clients rotate only past 70 % of the lifetime)
//   TEST_ADMIN        "1": enables the test-only admin routes below. NEVER in anything but a
//                     test: they let anyone on the loopback end any user's sign-in
//
// Prints exactly one line on stdout, `oidc-provider ready <issuer>`, when it listens; everything
// else goes to stderr. Exits 0 on SIGTERM / SIGINT.
//
// Clients:
//   gatehouse         confidential, client_secret_basic, grant types authorization_code +
//                     refresh_token, response type code
//   gatehouse-public  public (token_endpoint_auth_method none), same URIs
//   gatehouse-service confidential machine client, client_secret_basic, grant type
//                     client_credentials only, scope "orders:read orders:write" (no redirect URIs)
// PKCE (S256) is required for every authorization request.
//
// Machine tokens (client_credentials, features.resourceIndicators):
//   curl -u gatehouse-service:$SECRET -d grant_type=client_credentials \
//        -d resource=api://orders -d 'scope=orders:read' $ISSUER/token
//     → an RS256-signed JWT access token in the RFC 9068 profile: header typ "at+jwt", kid of the
//       provider's RSA key in /jwks; claims iss, sub = client_id = gatehouse-service,
//       aud "api://orders", scope (only orders:read / orders:write survive), exp, iat, jti.
//   the same without `resource` → an opaque access token (43 characters), to be checked at
//     /token/introspection (scope kept: orders:* are registered provider scopes).
//   Any other resource → 400 invalid_target. JWT access tokens cannot be introspected
//   (oidc-provider answers 400 unsupported_token_type); opaque ones can.
// The browser clients never send `resource`, so their access tokens stay opaque (and /me works).
//
// Introspection (RFC 7662, /token/introspection): any confidential client — `gatehouse` included,
// as the gateway uses it — may introspect any token (HTTP Basic client authentication); the
// public client only its own. Answer: {active:false} or {active:true, sub (users only),
// client_id, scope, exp, iat, iss, token_type, aud (JWT-format resource tokens only)}.
//
// Accounts: devInteractions' login page accepts any login and any password; the login name is
// the account id (`sub`). Claims: email <login>@example.com (verified), name, preferred_username
// = login, groups: alice → [admins, staff], bob → [staff], mallory → [guests], others → [].
//
// Consent: oidc-provider's default `loadExistingGrant` is kept, so the devInteractions consent
// page ("Continue") is shown the first time a client asks within a provider session and skipped
// afterwards (the grant is remembered in the session). A browser script must therefore treat the
// consent page as "click Continue if shown".
//
// Refresh tokens: issued only when the scope includes `offline_access` AND the authorization
// request carries `prompt=consent` (otherwise oidc-provider silently drops offline_access). A
// gateway that wants refresh tokens must send `scope=openid … offline_access&prompt=consent`,
// e.g. in Gatehouse: `[provider] scopes = ["openid","email","profile","groups","offline_access"]`
// and `[provider.extra_auth_params] prompt = "consent"` (then the consent page shows on every
// login).
//
// Test-only admin routes (only with TEST_ADMIN=1, only from a loopback peer; the server itself
// listens on 127.0.0.1 only). They stand for what an administrator does in a real identity
// provider's console, which the browser and the gateway never see:
//   POST /test/revoke?sub=alice  ends alice's sign-in at the provider: every grant of hers is
//                     revoked (its refresh tokens, access tokens and codes deleted, the grant
//                     destroyed) and every provider session of hers is destroyed, so her next
//                     authorization request meets the login form again. Answers
//                     {"grants":N,"sessions":M}.
//   GET  /test/stats  counters since start, as JSON: {"grants":{"<grant_type>":{"ok":N,
//                     "errors":{"<error_description>":N}}},"revoked_grants":N (by oidc-provider
//                     itself, e.g. refresh token reuse),"admin_revocations":N}
// Every token endpoint grant is also logged on stderr: `provider: grant refresh_token ok
// sub=alice rotations=2` or `provider: grant refresh_token error invalid_grant (refresh token
// already used)`.
//
// Endpoints: discovery /.well-known/openid-configuration, /auth, /token, /me (userinfo), /jwks,
// /token/introspection, /token/revocation, /session/end (RP-initiated logout: oidc-provider
// always answers a browser with a confirmation form, button "Yes, sign me out").

import http from 'node:http';
import { Provider, errors } from 'oidc-provider';

const env = process.env;
const list = (value, fallback) =>
  (value ?? fallback)
    .split(',')
    .map((s) => s.trim())
    .filter(Boolean);

const port = Number.parseInt(env.PORT ?? '0', 10);
const clientSecret = env.CLIENT_SECRET || 'gatehouse-secret';
const redirectUris = list(env.REDIRECT_URIS, 'http://127.0.0.1:4180/oauth2/callback');
const postLogoutUris = list(env.POST_LOGOUT_URIS, 'http://127.0.0.1:4180/');
const accessTtl = Number.parseInt(env.ACCESS_TTL ?? '300', 10);
const idTokenClaims = (env.ID_TOKEN_CLAIMS ?? '1') !== '0';
const serviceSecret = env.SERVICE_CLIENT_SECRET || 'gatehouse-service-secret';
const apiResource = env.API_RESOURCE || 'api://orders';
const API_SCOPES = ['orders:read', 'orders:write'];
const refreshTtl = Number.parseInt(env.REFRESH_TTL ?? String(24 * 3600), 10);
const rotateRefresh = env.ROTATE_REFRESH === '1';
const testAdmin = env.TEST_ADMIN === '1';

if (!Number.isInteger(port) || port < 0 || port > 65535) {
  console.error(`provider.mjs: bad PORT ${env.PORT}`);
  process.exit(2);
}
if (!Number.isInteger(accessTtl) || accessTtl <= 0) {
  console.error(`provider.mjs: bad ACCESS_TTL ${env.ACCESS_TTL}`);
  process.exit(2);
}
if (!Number.isInteger(refreshTtl) || refreshTtl <= 0) {
  console.error(`provider.mjs: bad REFRESH_TTL ${env.REFRESH_TTL}`);
  process.exit(2);
}

const GROUPS = {
  alice: ['admins', 'staff'],
  bob: ['staff'],
  mallory: ['guests'],
};

function account(login) {
  return {
    accountId: login,
    async claims(_use, _scope, _claims, _rejected) {
      return {
        sub: login,
        email: `${login}@example.com`,
        email_verified: true,
        name: login.charAt(0).toUpperCase() + login.slice(1),
        preferred_username: login,
        groups: GROUPS[login] ?? [],
      };
    },
  };
}

// Bind first so the issuer can name the real port, then hand requests to the provider.
const server = http.createServer();
await new Promise((resolve, reject) => {
  server.once('error', reject);
  server.listen(port, '127.0.0.1', resolve);
});
const issuer = `http://127.0.0.1:${server.address().port}`;

const configuration = {
  clients: [
    {
      client_id: 'gatehouse',
      client_secret: clientSecret,
      redirect_uris: redirectUris,
      post_logout_redirect_uris: postLogoutUris,
      grant_types: ['authorization_code', 'refresh_token'],
      response_types: ['code'],
      token_endpoint_auth_method: 'client_secret_basic',
    },
    {
      client_id: 'gatehouse-public',
      redirect_uris: redirectUris,
      post_logout_redirect_uris: postLogoutUris,
      grant_types: ['authorization_code', 'refresh_token'],
      response_types: ['code'],
      token_endpoint_auth_method: 'none',
    },
    {
      client_id: 'gatehouse-service',
      client_secret: serviceSecret,
      redirect_uris: [],
      grant_types: ['client_credentials'],
      response_types: [],
      token_endpoint_auth_method: 'client_secret_basic',
      scope: API_SCOPES.join(' '),
    },
  ],
  pkce: { required: () => true },
  features: {
    devInteractions: { enabled: true },
    rpInitiatedLogout: { enabled: true },
    introspection: {
      enabled: true,
      // Confidential clients (the gateway's `gatehouse` among them) may introspect any token;
      // the public client only its own.
      allowedPolicy: async (_ctx, client, token) =>
        client.clientAuthMethod !== 'none' || token.clientId === client.clientId,
    },
    revocation: { enabled: true },
    clientCredentials: { enabled: true },
    backchannelLogout: { enabled: false },
    resourceIndicators: {
      enabled: true,
      // No `resource` → no resource server → an opaque access token (the browser flows rely on
      // that: /me only accepts opaque tokens).
      defaultResource: async (_ctx, _client, oneOf) => oneOf,
      useGrantedResource: async () => true,
      getResourceServerInfo: async (_ctx, resource, _client) => {
        if (resource !== apiResource) {
          throw new errors.InvalidTarget(`unknown resource ${resource}`);
        }
        return {
          scope: API_SCOPES.join(' '),
          audience: apiResource,
          accessTokenTTL: accessTtl,
          accessTokenFormat: 'jwt',
          jwt: { sign: { alg: 'RS256' } },
        };
      },
    },
  },
  claims: {
    openid: ['sub'],
    email: ['email', 'email_verified'],
    profile: ['name', 'preferred_username'],
    groups: ['groups'],
  },
  scopes: ['openid', 'email', 'profile', 'groups', 'offline_access', ...API_SCOPES],
  conformIdTokenClaims: !idTokenClaims,
  findAccount: async (_ctx, sub) => account(sub),
  ttl: {
    AccessToken: accessTtl,
    AuthorizationCode: 60,
    IdToken: 3600,
    RefreshToken: refreshTtl,
    Interaction: 600,
    Session: 3600,
    Grant: 3600,
    ClientCredentials: accessTtl,
  },
  cookies: {
    // Fixed test keys: these sign the provider's own cookies (_session, _interaction…). Test
    // values only. Note that cookies are not isolated by port: the gateway on another
    // 127.0.0.1 port sees these cookies too (different names, so no clash).
    keys: ['gatehouse-e2e-provider-cookie-key-1', 'gatehouse-e2e-provider-cookie-key-2'],
  },
};

if (rotateRefresh) {
  configuration.rotateRefreshToken = true;
}

const provider = new Provider(issuer, configuration);
provider.on('server_error', (_ctx, err) => console.error('provider server_error:', err));

// --- grant log and counters (GET /test/stats) ---------------------------------------------------
const stats = { grants: {}, revoked_grants: 0, admin_revocations: 0 };
const grantStats = (type) => (stats.grants[type] ??= { ok: 0, errors: {} });
provider.on('grant.success', (ctx) => {
  const type = ctx.oidc.params?.grant_type ?? '?';
  grantStats(type).ok += 1;
  const rt = ctx.oidc.entities?.RefreshToken;
  const sub = ctx.oidc.entities?.Account?.accountId ?? rt?.accountId ?? '-';
  const rotations = type === 'refresh_token' ? ` rotations=${rt?.rotations ?? 0}` : '';
  console.error(`provider: grant ${type} ok sub=${sub}${rotations}`);
});
provider.on('grant.error', (ctx, err) => {
  const type = ctx.oidc?.params?.grant_type ?? '?';
  const why = err.error_description || err.message || String(err);
  const errors = grantStats(type).errors;
  errors[why] = (errors[why] ?? 0) + 1;
  console.error(`provider: grant ${type} error ${err.error ?? 'server_error'} (${why})`);
});
provider.on('grant.revoked', (_ctx, grantId) => {
  stats.revoked_grants += 1;
  console.error(`provider: grant ${grantId} revoked by the provider`);
});

// --- test-only admin routes (TEST_ADMIN=1) ------------------------------------------------------
// Who holds which grants and provider sessions, from the models' save events (the in-memory
// adapter has no index by account).
const grantsOf = new Map(); // accountId -> Set(grantId)
const sessionsOf = new Map(); // accountId -> Set(session jti)
const remember = (map, account, id) => {
  if (!account || !id) return;
  if (!map.has(account)) map.set(account, new Set());
  map.get(account).add(id);
};
if (testAdmin) {
  provider.on('grant.saved', (grant) => remember(grantsOf, grant.accountId, grant.jti));
  provider.on('session.saved', (session) => remember(sessionsOf, session.accountId, session.jti));
}

async function revokeAccount(sub) {
  const grants = [...(grantsOf.get(sub) ?? [])];
  const sessions = [...(sessionsOf.get(sub) ?? [])];
  grantsOf.delete(sub);
  sessionsOf.delete(sub);
  for (const grantId of grants) {
    await Promise.all([
      provider.AccessToken.adapter.revokeByGrantId(grantId),
      provider.RefreshToken.adapter.revokeByGrantId(grantId),
      provider.AuthorizationCode.adapter.revokeByGrantId(grantId),
      provider.Grant.adapter.destroy(grantId),
    ]);
  }
  for (const jti of sessions) {
    await provider.Session.adapter.destroy(jti);
  }
  stats.admin_revocations += 1;
  console.error(`provider: TEST ADMIN revoked sub=${sub}: ${grants.length} grant(s), ${sessions.length} session(s)`);
  return { grants: grants.length, sessions: sessions.length };
}

function isLoopback(address) {
  return address === '127.0.0.1' || address === '::1' || address === '::ffff:127.0.0.1';
}

async function testRoute(req, res) {
  const url = new URL(req.url, issuer);
  const send = (status, body) => {
    res.writeHead(status, { 'content-type': 'application/json', 'cache-control': 'no-store' });
    res.end(JSON.stringify(body));
  };
  if (!isLoopback(req.socket.remoteAddress)) {
    send(403, { error: 'loopback only' });
  } else if (req.method === 'POST' && url.pathname === '/test/revoke') {
    const sub = url.searchParams.get('sub');
    if (!sub) {
      send(400, { error: 'sub is required' });
    } else {
      send(200, await revokeAccount(sub));
    }
  } else if (req.method === 'GET' && url.pathname === '/test/stats') {
    send(200, stats);
  } else {
    send(404, { error: 'no such test route' });
  }
}

const providerCallback = provider.callback();
server.on('request', (req, res) => {
  if (testAdmin && (req.url === '/test' || req.url.startsWith('/test/'))) {
    testRoute(req, res).catch((err) => {
      console.error('provider.mjs: test route failed:', err);
      if (!res.headersSent) res.writeHead(500);
      res.end();
    });
    return;
  }
  providerCallback(req, res);
});

console.log(`oidc-provider ready ${issuer}`);

let stopping = false;
function stop(signal) {
  if (stopping) return;
  stopping = true;
  console.error(`provider.mjs: ${signal}, closing`);
  server.close(() => process.exit(0));
  server.closeAllConnections?.();
  setTimeout(() => process.exit(0), 2000).unref();
}
process.on('SIGTERM', () => stop('SIGTERM'));
process.on('SIGINT', () => stop('SIGINT'));
