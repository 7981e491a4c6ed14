// A real OpenID provider (the `oidc-provider` package) for the OAuth tests; tests/python/oidc_support.py
// installs this folder's packages with `npm ci` and starts it. Test use only: keys, accounts and
// grants live in memory and are gone when it stops.
//
// Run: node provider.mjs CONFIG.json   (or the same JSON inline in the env var OIDC_PROVIDER_CONFIG)
// CONFIG (every field but `audience` and `keys` optional):
//   port          port on 127.0.0.1 (0 or absent: a free one); the issuer is http://127.0.0.1:PORT
//   audience      the resource indicator of the one protected resource (toolhost's MCP URL, e.g.
//                 "http://127.0.0.1:8123/mcp"); every access token is a JWT with this `aud`, also
//                 when the client sends no `resource` parameter (it is the default resource)
//   extra_audiences  other resource indicators a client may ask for with `resource=`
//                 (same scopes; for wrong-audience tests)
//   scopes        the scopes the resource accepts, e.g. ["mcp:tools"]; a token's `scope` claim
//                 holds those of them the client asked for and the user consented to
//   default_scope the scope put on an authorization request that has none (the Mistral SDK sends
//                 none); default: all of `scopes`. "openid" gives tokens with no `scope` claim
//                 (still with `aud`). oidc-provider refuses (error=access_denied) a request that
//                 ends with nothing granted, so "" (or no `scopes`) fails a scopeless client
//   keys          private JWKs (RSA and/or EC P-256), each with `kid`, `alg` ("RS256", "ES256",
//                 ...) and `use: "sig"`; all are published at /jwks; tokens are signed with the
//                 first one whose alg is `alg` below, or the one with `sign_kid`
//   alg           access token signing alg, default "RS256";  sign_kid: see keys
//   password      the password of every account, default "test"; any login name is an account
//                 and its `sub` is that name
//   access_token_ttl  seconds, default 3600
//
// Key rotation: stop it (SIGTERM) and start it again on the same port with the new key set (new
// signing key first, old ones after it if they should still verify). Node listens with
// SO_REUSEADDR, so the port is free again as soon as the old process has exited.
//
// Login, without a browser: the authorization URL redirects (303) to /interaction/UID, a page with
// one form (POST /interaction/UID/login: login, password). A right password redirects back to
// /auth/UID, which redirects to /interaction/UID again for consent: a page with one form
// (POST /interaction/UID/confirm, no fields), then /auth/UID redirects to the client's
// redirect_uri with code and state. A wrong password answers 401 with the login form again.
// Keep cookies along the way. /interaction/UID/abort denies access (redirect with error).
//
// Prints `READY <issuer>` on stdout once listening; everything else goes to stderr.

import { readFileSync } from 'node:fs';
import { createServer } from 'node:http';
import { randomBytes } from 'node:crypto';

import Provider, { errors } from 'oidc-provider';

// oidc-provider prints its "you SHOULD change" notes with console.info: keep stdout for READY.
console.info = (...args) => console.error(...args);
console.log = (...args) => console.error(...args);

const config = JSON.parse(process.argv[2] ? readFileSync(process.argv[2], 'utf8') : process.env.OIDC_PROVIDER_CONFIG);
if (typeof config.audience !== 'string') throw new Error('config: `audience` (a URL string) is required');
if (!Array.isArray(config.keys) || !config.keys.length) throw new Error('config: `keys` (private JWKs) is required');

const audience = config.audience;
const audiences = new Set([audience, ...(config.extra_audiences ?? [])]);
const scopes = config.scopes ?? [];
const defaultScope = config.default_scope ?? scopes.join(' ');
const alg = config.alg ?? 'RS256';
const password = config.password ?? 'test';
const accessTokenTTL = config.access_token_ttl ?? 3600;

const html = (title, body) => `<!DOCTYPE html>
<html><head><meta charset="utf-8"><title>${title}</title></head>
<body><h1>${title}</h1>
${body}
</body></html>
`;
const escape = (s) => String(s).replace(/[&<>"']/g, (c) => `&#${c.charCodeAt(0)};`);

const loginForm = (uid, error) => html('Sign-in', `${error ? `<p class="error">${escape(error)}</p>\n` : ''}<form method="post" action="/interaction/${uid}/login">
<input type="text" name="login" autofocus>
<input type="password" name="password">
<button type="submit">Sign in</button>
</form>`);

const consentForm = (uid, details, clientId) => html('Authorize', `<p>Client ${escape(clientId)} asks for: ${escape(JSON.stringify(details))}</p>
<form method="post" action="/interaction/${uid}/confirm">
<button type="submit">Allow</button>
</form>
<form method="post" action="/interaction/${uid}/abort">
<button type="submit">Deny</button>
</form>`);

async function readForm(req) {
  let body = '';
  for await (const chunk of req) body += chunk;
  return Object.fromEntries(new URLSearchParams(body));
}

function makeProvider(issuer) {
  const provider = new Provider(issuer, {
    jwks: { keys: config.keys },
    // Listed in scopes_supported, so a client may register with them (the official MCP SDK does).
    scopes: ['openid', 'offline_access', ...scopes],
    cookies: { keys: [randomBytes(32).toString('base64url')] },
    clientBasedCORS: () => true,
    async findAccount(ctx, sub) {
      return { accountId: sub, async claims() { return { sub }; } };
    },
    interactions: { url: (ctx, interaction) => `/interaction/${interaction.uid}` },
    features: {
      devInteractions: { enabled: false },
      // Open dynamic client registration (RFC 7591), no initial access token.
      registration: { enabled: true, initialAccessToken: false },
      introspection: { enabled: true },
      revocation: { enabled: true },
      resourceIndicators: {
        enabled: true,
        defaultResource: (ctx, client, oneOf) => (oneOf ? (oneOf.includes(audience) ? audience : oneOf[0]) : audience),
        useGrantedResource: () => true,
        getResourceServerInfo(ctx, resourceIndicator) {
          if (!audiences.has(resourceIndicator)) throw new errors.InvalidTarget();
          return {
            scope: scopes.join(' '),
            audience: resourceIndicator,
            accessTokenTTL,
            accessTokenFormat: 'jwt',
            jwt: { sign: config.sign_kid ? { alg, kid: config.sign_kid } : { alg } },
          };
        },
      },
    },
    // Every client that may refresh gets a refresh token, not only those asking for offline_access.
    issueRefreshToken: async (ctx, client) => client.grantTypeAllowed('refresh_token'),
    ttl: {
      AccessToken: accessTokenTTL,
      AuthorizationCode: 600,
      Grant: 3600,
      IdToken: 3600,
      Interaction: 3600,
      RefreshToken: 86400,
      Session: 3600,
    },
    renderError(ctx, out, error) {
      ctx.type = 'html';
      ctx.body = html('Error', `<pre>${escape(JSON.stringify(out))}</pre>`);
    },
  });
  provider.proxy = false;

  provider.on('server_error', (ctx, error) => console.error('server_error', error));

  // An authorization request without `scope` asks for the default scope.
  provider.use(async (ctx, next) => {
    if (ctx.method === 'GET' && ctx.path === '/auth' && !ctx.query.scope && defaultScope) {
      ctx.query = { ...ctx.query, scope: defaultScope };
    }
    await next();
  });

  // The interaction pages: plain forms, no scripts.
  provider.use(async (ctx, next) => {
    const match = /^\/interaction\/([^/]+)(?:\/(login|confirm|abort))?$/.exec(ctx.path);
    if (!match) return next();
    const [, uid, action] = match;
    const details = await provider.interactionDetails(ctx.req, ctx.res);
    if (details.uid !== uid) ctx.throw(400, 'interaction mismatch');
    const { prompt, params, session } = details;
    ctx.set('cache-control', 'no-store');
    if (!action && ctx.method === 'GET') {
      ctx.type = 'html';
      ctx.body = prompt.name === 'login'
        ? loginForm(uid)
        : consentForm(uid, prompt.details, params.client_id);
      return undefined;
    }
    if (ctx.method !== 'POST' || !action) ctx.throw(405);
    let result;
    if (action === 'login') {
      if (prompt.name !== 'login') ctx.throw(400, 'not a login prompt');
      const form = await readForm(ctx.req);
      if (!form.login || form.password !== password) {
        ctx.status = 401;
        ctx.type = 'html';
        ctx.body = loginForm(uid, 'wrong login or password');
        return undefined;
      }
      result = { login: { accountId: form.login } };
    } else if (action === 'confirm') {
      if (prompt.name !== 'consent') ctx.throw(400, 'not a consent prompt');
      const grant = details.grantId
        ? await provider.Grant.find(details.grantId)
        : new provider.Grant({ accountId: session.accountId, clientId: params.client_id });
      const missing = prompt.details;
      if (missing.missingOIDCScope) grant.addOIDCScope(missing.missingOIDCScope.join(' '));
      if (missing.missingOIDCClaims) grant.addOIDCClaims(missing.missingOIDCClaims);
      for (const [indicator, granted] of Object.entries(missing.missingResourceScopes ?? {})) {
        grant.addResourceScope(indicator, granted.join(' '));
      }
      const grantId = await grant.save();
      result = { consent: details.grantId ? {} : { grantId } };
    } else {
      result = { error: 'access_denied', error_description: 'the user denied access' };
    }
    const returnTo = await provider.interactionResult(ctx.req, ctx.res, result, { mergeWithLastSubmission: true });
    ctx.status = 303;
    ctx.redirect(returnTo);
    return undefined;
  });

  return provider;
}

let handler = (req, res) => { res.statusCode = 503; res.end(); };
const server = createServer((req, res) => handler(req, res));
server.listen(config.port ?? 0, '127.0.0.1', () => {
  const issuer = `http://127.0.0.1:${server.address().port}`;
  handler = makeProvider(issuer).callback();
  process.stdout.write(`READY ${issuer}\n`);
});
server.on('error', (error) => {
  console.error(`cannot listen: ${error.message}`);
  process.exit(1);
});

const stop = () => {
  server.close(() => process.exit(0));
  server.closeAllConnections();
};
process.on('SIGTERM', stop);
process.on('SIGINT', stop);
