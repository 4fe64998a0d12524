// Browser end-to-end scenarios for Gatehouse: headless Debian Chromium driven by playwright-core.
//
//   GATEWAY_URL=http://127.0.0.1:PORT node tests/e2e/browser.mjs [scenario ...]
//   PROVIDER_URL=http://127.0.0.1:PORT node tests/e2e/browser.mjs provider-smoke
//
// Without arguments: all gateway scenarios when GATEWAY_URL is set, otherwise all provider
// scenarios (provider-smoke, provider-two-tabs, provider-refresh) when PROVIDER_URL is set. A
// scenario named on the command line whose environment is missing fails.
//
// Output: one line per scenario, `ok <name>` or `FAIL <name>: <reason>`, then the plain closing
// line `N passed, M failed`. Exit status 0 only when nothing failed. Every page seen is written
// to tests/e2e/artifacts/<scenario>-<n>.png (ARTIFACTS_DIR overrides), also on failure.
//
// Environment:
//   GATEWAY_URL        the gateway's public origin, e.g. http://127.0.0.1:4180
//   PROVIDER_URL       the provider's issuer (from provider.mjs); optional for gateway scenarios
//   DEEP_LINK          protected deep link (default /app/page?x=1&y=two)
//   TAB1_PATH          two-tabs, first tab (default /app/tab-one?t=1)
//   TAB2_PATH          two-tabs, second tab (default /app/tab-two?t=2)
//   PUBLIC_PATH        public route (default /public/hello)
//   FORBIDDEN_PATH     route requiring group admins (default /admin/)
//   SIGN_OUT_PATH      the gateway's sign-out endpoint (default /oauth2/sign_out)
//   EXPECT_TEXT        text the protected page shows after login as alice (default alice)
//   EXPECT_FORBIDDEN   what the 403 page says: alternatives separated by `|`, matched
//                      case-insensitively (default "not allowed|forbidden|access denied")
//   LOGIN_USER         who logs in for the identity scenarios (default alice)
//   FORBIDDEN_USER     who logs in for forbidden-group (default mallory)
//   CHROMIUM           browser executable (default /usr/bin/chromium)
//   SCENARIO_TIMEOUT   seconds per scenario (default 30)
//   SMOKE_CLIENT_ID    provider-smoke's public client (default gatehouse-public)
//   SMOKE_REDIRECT_URI redirect URI registered at the provider (default
//                      http://127.0.0.1:4180/oauth2/callback, provider.mjs' default; nothing
//                      needs to listen there: the browser's request to it is intercepted)
//   SMOKE_POST_LOGOUT_URI  post-logout URI registered at the provider (default http://127.0.0.1:4180/)
//   CLIENT_SECRET      provider-refresh: secret of the confidential client `gatehouse`
//   ACCESS_TTL         stays-signed-in / refresh-token-revoked: the provider's access token
//                      lifetime in seconds (default 5)
//   STAY_SECONDS       stays-signed-in: how long to keep reloading (default 18)
//   RELOAD_EVERY_MS    stays-signed-in: pause between reloads (default 1000)
//   MIN_ACCESS_TOKENS  stays-signed-in: distinct access tokens the app must have seen (default 3)
//   PARALLEL_FETCHES   stays-signed-in: concurrent fetch() calls the page makes before every
//                      reload, all carrying the same cookie (default 4)
//   STAY_PATH          stays-signed-in: the app page reloaded (default /app/stay?tab=1)
//   REVOKED_PATH       refresh-token-revoked: the app page (default /app/revoked?tab=1)
//   REVOKE_URL         refresh-token-revoked: the provider's test-only admin route that ends
//                      LOGIN_USER's sign-in (provider.mjs with TEST_ADMIN=1:
//                      $ISSUER/test/revoke?sub=alice)
//   ACCESS_TOKEN_HEADER  the header in which the app receives the access token, read from the
//                      echo upstream's JSON (default x-forwarded-access-token)
//
// Selectors (oidc-provider 9 devInteractions and end-session pages):
//   login form     input[name="login"], input[name="password"], button "Sign-in"
//   consent page   button "Continue"
//   logout page    button "Yes, sign me out"

import { createHash, randomBytes } from 'node:crypto';
import { mkdirSync, readdirSync, rmSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import path from 'node:path';
import { chromium } from 'playwright-core';

const env = process.env;
const here = path.dirname(fileURLToPath(import.meta.url));
const ARTIFACTS = env.ARTIFACTS_DIR || path.join(here, 'artifacts');
const GATEWAY = env.GATEWAY_URL ? env.GATEWAY_URL.replace(/\/+$/, '') : undefined;
const PROVIDER = env.PROVIDER_URL ? env.PROVIDER_URL.replace(/\/+$/, '') : undefined;
const DEEP_LINK = env.DEEP_LINK || '/app/page?x=1&y=two';
const TAB1_PATH = env.TAB1_PATH || '/app/tab-one?t=1';
const TAB2_PATH = env.TAB2_PATH || '/app/tab-two?t=2';
const PUBLIC_PATH = env.PUBLIC_PATH || '/public/hello';
const FORBIDDEN_PATH = env.FORBIDDEN_PATH || '/admin/';
const SIGN_OUT_PATH = env.SIGN_OUT_PATH || '/oauth2/sign_out';
const EXPECT_TEXT = env.EXPECT_TEXT || 'alice';
const EXPECT_FORBIDDEN = (env.EXPECT_FORBIDDEN || 'not allowed|forbidden|access denied')
  .split('|')
  .map((s) => s.trim().toLowerCase())
  .filter(Boolean);
const LOGIN_USER = env.LOGIN_USER || 'alice';
const FORBIDDEN_USER = env.FORBIDDEN_USER || 'mallory';
const CHROMIUM = env.CHROMIUM || '/usr/bin/chromium';
const SCENARIO_MS = Number(env.SCENARIO_TIMEOUT || 30) * 1000;
const SMOKE_CLIENT_ID = env.SMOKE_CLIENT_ID || 'gatehouse-public';
const SMOKE_REDIRECT_URI = env.SMOKE_REDIRECT_URI || 'http://127.0.0.1:4180/oauth2/callback';
const SMOKE_POST_LOGOUT_URI = env.SMOKE_POST_LOGOUT_URI || 'http://127.0.0.1:4180/';
const CLIENT_SECRET = env.CLIENT_SECRET || 'gatehouse-secret';
const ACCESS_TTL_MS = Number(env.ACCESS_TTL || 5) * 1000;
const STAY_MS = Number(env.STAY_SECONDS || 18) * 1000;
const RELOAD_EVERY_MS = Number(env.RELOAD_EVERY_MS || 1000);
const MIN_ACCESS_TOKENS = Number(env.MIN_ACCESS_TOKENS || 3);
const PARALLEL_FETCHES = Number(env.PARALLEL_FETCHES ?? 4);
const STAY_PATH = env.STAY_PATH || '/app/stay?tab=1';
const REVOKED_PATH = env.REVOKED_PATH || '/app/revoked?tab=1';
const REVOKE_URL = env.REVOKE_URL;
const ACCESS_TOKEN_HEADER = (env.ACCESS_TOKEN_HEADER || 'x-forwarded-access-token').toLowerCase();

const MAX_NAVIGATIONS_AFTER_LOGIN = 6;
const STEP_MS = 10_000;

// Flags known to work on this machine kind (shared/design/testing.md): without the
// background-networking ones Chromium keeps trying hosts the closed network refuses.
const CHROMIUM_ARGS = [
  '--headless=new',
  '--no-sandbox',
  '--disable-gpu',
  '--disable-dev-shm-usage',
  '--disable-background-networking',
  '--disable-component-update',
  '--disable-sync',
  '--no-first-run',
  '--disable-quic',
];

// --- helpers -------------------------------------------------------------------------------------

class Failure extends Error {}
function check(cond, message) {
  if (!cond) throw new Failure(message);
}

const SELECTORS = {
  login: 'input[name="login"]',
  password: 'input[name="password"]',
  signIn: 'button[type="submit"]:has-text("Sign-in")',
  consent: 'button[type="submit"]:has-text("Continue")',
  logoutYes: 'button[name="logout"][value="yes"]:has-text("Yes, sign me out")',
};

/** Per-scenario state: screenshots, navigation log, pages. */
class Run {
  constructor(name, context) {
    this.name = name;
    this.context = context;
    this.shots = 0;
    this.navigations = []; // main-frame navigation requests, in order: { page, url, method }
    this.responses = new Map(); // page -> last main-frame navigation response
    this.pages = [];
    context.on('page', (p) => this.track(p));
  }

  track(page) {
    if (this.pages.includes(page)) return;
    this.pages.push(page);
    page.on('request', (req) => {
      if (req.isNavigationRequest() && req.frame() === page.mainFrame()) {
        this.navigations.push({ page, url: req.url(), method: req.method() });
      }
    });
    page.on('response', (resp) => {
      const req = resp.request();
      if (req.isNavigationRequest() && req.frame() === page.mainFrame()) {
        this.responses.set(page, resp);
      }
    });
  }

  async newPage() {
    const page = await this.context.newPage();
    this.track(page);
    return page;
  }

  /** Screenshot of what `page` shows now: artifacts/<scenario>-<n>.png. */
  async snap(page) {
    this.shots += 1;
    const file = path.join(ARTIFACTS, `${this.name}-${this.shots}.png`);
    try {
      await page.screenshot({ path: file, fullPage: true, timeout: 5000 });
    } catch (err) {
      // A page in the middle of navigating may refuse; the scenario's own checks decide.
      console.error(`  (${this.name}: screenshot ${this.shots} failed: ${firstLine(err)})`);
    }
  }

  navigationsSince(mark, page) {
    return this.navigations.slice(mark).filter((n) => !page || n.page === page);
  }
}

function firstLine(err) {
  return String(err?.message ?? err).split('\n')[0];
}

function sameUrl(a, b) {
  return new URL(a).href === new URL(b).href;
}

function origin(u) {
  return new URL(u).origin;
}

async function bodyText(page) {
  return (await page.locator('body').innerText({ timeout: STEP_MS })).trim();
}

async function visible(locator) {
  try {
    return await locator.isVisible();
  } catch {
    return false;
  }
}

/**
 * On the provider's login page: log in as `user`, then click "Continue" on the consent page if
 * it is shown. Returns when the browser has left the provider's interaction pages, with
 * `run.mark` set to the navigation count at the last click (for redirect-loop counting).
 */
async function providerLogin(run, page, user, { expectForm = true } = {}) {
  const login = page.locator(SELECTORS.login);
  if (expectForm) {
    await login.waitFor({ state: 'visible', timeout: STEP_MS }).catch(() => {
      throw new Failure(`no login form (at ${page.url()})`);
    });
  }
  if (await visible(login)) {
    await run.snap(page);
    await login.fill(user);
    await page.locator(SELECTORS.password).fill('any-password');
    run.mark = run.navigations.length;
    await page.locator(SELECTORS.signIn).click();
  }
  // Then the consent page, or straight out of the provider's interaction pages.
  const consent = page.locator(SELECTORS.consent);
  const deadline = Date.now() + STEP_MS;
  let consented = false;
  for (;;) {
    const url = new URL(page.url());
    const onInteraction = url.pathname.startsWith('/interaction/');
    if (!consented && (await visible(consent))) {
      await run.snap(page);
      run.mark = run.navigations.length;
      await consent.click();
      consented = true;
    } else if (!onInteraction && url.href !== 'about:blank') {
      return;
    }
    check(Date.now() < deadline, `stuck on the provider's interaction pages at ${page.url()}`);
    await page.waitForTimeout(50);
  }
}

async function waitUrl(page, expected, what) {
  try {
    await page.waitForURL((u) => sameUrl(u.href, expected), { timeout: STEP_MS, waitUntil: 'load' });
  } catch {
    throw new Failure(`${what}: expected ${expected}, at ${page.url()}`);
  }
}

/** `page.goto` that tolerates a navigation that ends in a redirect to an unreachable URL. */
async function gotoLenient(page, url) {
  try {
    return await page.goto(url, { waitUntil: 'load', timeout: STEP_MS });
  } catch (err) {
    if (/ERR_CONNECTION_REFUSED|ERR_ABORTED|interrupted by another navigation/.test(err.message)) {
      return null;
    }
    throw err;
  }
}

function needGateway() {
  check(GATEWAY, 'GATEWAY_URL is not set');
}

function needProvider() {
  check(PROVIDER, 'PROVIDER_URL is not set');
}

// --- gateway scenarios ---------------------------------------------------------------------------

/** Opens a protected deep link, logs in, lands on exactly that link showing the identity. */
async function loginThroughGateway(run, page, link, user) {
  const target = GATEWAY + link;
  await page.goto(target, { waitUntil: 'load', timeout: STEP_MS });
  check(
    origin(page.url()) !== GATEWAY || (await visible(page.locator(SELECTORS.login))),
    `protected ${link} did not redirect to the provider (at ${page.url()})`,
  );
  if (PROVIDER) {
    check(origin(page.url()) === PROVIDER, `expected the provider ${PROVIDER}, at ${page.url()}`);
  }
  await providerLogin(run, page, user);
  await waitUrl(page, target, 'after login');
  await run.snap(page);
}

async function deepLinkLogin(run) {
  needGateway();
  const page = await run.newPage();
  await loginThroughGateway(run, page, DEEP_LINK, LOGIN_USER);
  const text = await bodyText(page);
  check(text.includes(EXPECT_TEXT), `page does not show ${JSON.stringify(EXPECT_TEXT)}: ${text.slice(0, 300)}`);
}

async function signOut(run) {
  needGateway();
  const page = await run.newPage();
  await loginThroughGateway(run, page, DEEP_LINK, LOGIN_USER);

  await page.goto(GATEWAY + SIGN_OUT_PATH, { waitUntil: 'load', timeout: STEP_MS });
  await run.snap(page);
  if (PROVIDER) {
    check(origin(page.url()) === PROVIDER, `sign-out did not go to the provider (at ${page.url()})`);
  }
  const yes = page.locator(SELECTORS.logoutYes);
  if (await yes.isVisible().catch(() => false)) {
    const mark = run.navigations.length;
    await yes.click();
    // Back at the gateway (whose post-logout page may itself send us to the login again).
    const deadline = Date.now() + STEP_MS;
    while (!run.navigationsSince(mark, page).some((n) => origin(n.url) === GATEWAY)) {
      check(Date.now() < deadline, `the provider did not send the browser back to the gateway (at ${page.url()})`);
      await page.waitForTimeout(50);
    }
    await page.waitForLoadState('load');
  } else {
    check(origin(page.url()) === GATEWAY, `no logout confirmation and not back at the gateway (at ${page.url()})`);
  }
  await run.snap(page);

  // Logged out at the gateway and at the provider: a protected page asks for a login again.
  await page.goto(GATEWAY + DEEP_LINK, { waitUntil: 'load', timeout: STEP_MS });
  const login = page.locator(SELECTORS.login);
  await login.waitFor({ state: 'visible', timeout: STEP_MS }).catch(() => {
    throw new Failure(`after sign-out the protected page did not show the provider's login form (at ${page.url()})`);
  });
  await run.snap(page);
}

async function twoTabs(run) {
  needGateway();
  const tab1 = await run.newPage();
  const tab2 = await run.newPage();
  const t1 = GATEWAY + TAB1_PATH;
  const t2 = GATEWAY + TAB2_PATH;
  await tab1.goto(t1, { waitUntil: 'load', timeout: STEP_MS });
  await tab2.goto(t2, { waitUntil: 'load', timeout: STEP_MS });
  for (const tab of [tab1, tab2]) {
    await tab.locator(SELECTORS.login).waitFor({ state: 'visible', timeout: STEP_MS }).catch(() => {
      throw new Failure(`a tab did not reach the provider's login form (at ${tab.url()})`);
    });
  }
  await tab1.bringToFront();
  await providerLogin(run, tab1, LOGIN_USER);
  await waitUrl(tab1, t1, 'tab 1');
  await run.snap(tab1);
  // Tab 2 still shows its own login form; completing it may reuse the provider session.
  await tab2.bringToFront();
  await providerLogin(run, tab2, LOGIN_USER, { expectForm: false });
  await waitUrl(tab2, t2, 'tab 2');
  await run.snap(tab2);
  for (const tab of [tab1, tab2]) {
    const text = await bodyText(tab);
    check(text.includes(EXPECT_TEXT), `${tab === tab1 ? 'tab 1' : 'tab 2'} does not show ${JSON.stringify(EXPECT_TEXT)}`);
  }
}

async function forbiddenGroup(run) {
  needGateway();
  const page = await run.newPage();
  const target = GATEWAY + FORBIDDEN_PATH;
  await page.goto(target, { waitUntil: 'load', timeout: STEP_MS });
  await providerLogin(run, page, FORBIDDEN_USER);
  // Wait for the gateway's answer: a 403 page, on the gateway, without bouncing around.
  const deadline = Date.now() + STEP_MS;
  for (;;) {
    const resp = run.responses.get(page);
    const count = run.navigationsSince(run.mark ?? 0, page).length;
    check(
      count <= MAX_NAVIGATIONS_AFTER_LOGIN,
      `redirect loop: ${count} navigations after login: ${run
        .navigationsSince(run.mark ?? 0, page)
        .map((n) => n.url)
        .join(' -> ')}`,
    );
    if (resp && origin(resp.url()) === GATEWAY && resp.status() === 403) break;
    check(
      Date.now() < deadline,
      `no 403 from the gateway (last: ${resp ? `${resp.status()} ${resp.url()}` : 'none'}, at ${page.url()})`,
    );
    await page.waitForTimeout(50);
  }
  await page.waitForLoadState('load');
  await run.snap(page);
  const text = (await bodyText(page)).toLowerCase();
  check(
    EXPECT_FORBIDDEN.some((t) => text.includes(t)),
    `403 page says none of ${JSON.stringify(EXPECT_FORBIDDEN)}: ${text.slice(0, 300)}`,
  );
  // A moment later still no further navigation (a loop would keep going).
  await page.waitForTimeout(500);
  const count = run.navigationsSince(run.mark ?? 0, page).length;
  check(count <= MAX_NAVIGATIONS_AFTER_LOGIN, `redirect loop: ${count} navigations after login`);
}

async function publicRoute(run) {
  needGateway();
  const page = await run.newPage();
  const target = GATEWAY + PUBLIC_PATH;
  const resp = await page.goto(target, { waitUntil: 'load', timeout: STEP_MS });
  await run.snap(page);
  const away = run.navigations.filter((n) => origin(n.url) !== GATEWAY);
  check(away.length === 0, `public route left the gateway: ${away.map((n) => n.url).join(', ')}`);
  check(run.navigations.length === 1, `public route redirected: ${run.navigations.map((n) => n.url).join(' -> ')}`);
  check(sameUrl(page.url(), target), `expected ${target}, at ${page.url()}`);
  check(resp && resp.status() < 400, `public route answered ${resp?.status()}`);
}

// --- refresh scenarios (gateway with refresh tokens and pass_access_token) -------------------------

/** The echo upstream's JSON behind a navigation response: what the app received. */
async function echoed(resp, what) {
  check(resp, `${what}: no response`);
  const text = await resp.text().catch(() => '');
  try {
    return JSON.parse(text);
  } catch {
    throw new Failure(`${what}: not the app's JSON (${resp.status()} ${resp.url()}): ${text.slice(0, 200)}`);
  }
}

function appToken(json, what) {
  const token = json?.headers?.[ACCESS_TOKEN_HEADER];
  check(token, `${what}: the app received no ${ACCESS_TOKEN_HEADER}`);
  return token;
}

/** A short fingerprint of a token for the log (never the token itself). */
function fingerprint(token) {
  return createHash('sha256').update(token).digest('hex').slice(0, 8);
}

/** Main-frame navigation responses of `page` from now on (status, url), for error-page checks. */
function recordResponses(page) {
  const seen = [];
  const listener = (resp) => {
    const req = resp.request();
    if (req.isNavigationRequest() && req.frame() === page.mainFrame()) {
      seen.push({ status: resp.status(), url: resp.url() });
    }
  };
  page.on('response', listener);
  return { seen, stop: () => page.off('response', listener) };
}

/**
 * PARALLEL_FETCHES concurrent same-origin fetch() calls from the page, as a single-page app
 * makes them: all leave with the cookie the browser holds now, so when the access token is due
 * they all meet the refresh at once (the gateway's single flight). Each must be the app's 200
 * for LOGIN_USER, without a redirect.
 */
async function parallelFetches(page, what) {
  if (!PARALLEL_FETCHES) return [];
  const paths = [...Array(PARALLEL_FETCHES).keys()].map((i) => `/app/xhr?i=${i}`);
  const results = await page.evaluate(
    (list) =>
      Promise.all(
        list.map((p) =>
          fetch(p, { credentials: 'same-origin', headers: { accept: 'application/json' } }).then(
            async (r) => ({ status: r.status, redirected: r.redirected, url: r.url, body: await r.text() }),
            (err) => ({ error: String(err) }),
          ),
        ),
      ),
    paths,
  );
  const tokens = [];
  results.forEach((r, i) => {
    const label = `${what}, fetch ${paths[i]}`;
    check(!r.error, `${label}: ${r.error}`);
    check(r.status === 200 && !r.redirected, `${label}: ${r.status}${r.redirected ? ` redirected to ${r.url}` : ''}: ${r.body.slice(0, 200)}`);
    let json;
    try {
      json = JSON.parse(r.body);
    } catch {
      throw new Failure(`${label}: not the app's JSON: ${r.body.slice(0, 200)}`);
    }
    check(json.headers?.['x-forwarded-user'] === LOGIN_USER, `${label}: the app saw user ${json.headers?.['x-forwarded-user']}`);
    tokens.push(appToken(json, label));
  });
  return tokens;
}

/**
 * Logs in, then for STAY_SECONDS (several access token lifetimes) keeps using the app: a burst
 * of concurrent fetches, then a reload, every RELOAD_EVERY_MS. Every load is the app's 200
 * straight from the gateway (no trip to the provider), every fetch too, and the access token
 * the app receives changes over time (the gateway refreshed it before forwarding).
 */
async function staysSignedIn(run) {
  needGateway();
  const page = await run.newPage();
  const target = GATEWAY + STAY_PATH;
  const responses = recordResponses(page);
  await loginThroughGateway(run, page, STAY_PATH, LOGIN_USER);
  const landed = responses.seen.at(-1);
  check(landed && landed.status === 200, `after login: ${JSON.stringify(landed)}`);
  const start = Date.now();
  const first = run.responses.get(page);
  const tokens = [{ at: 0, token: appToken(await echoed(first, 'after login'), 'after login') }];
  const fetched = new Set();
  let loads = 0;
  while (Date.now() - start < STAY_MS) {
    await page.waitForTimeout(RELOAD_EVERY_MS);
    loads += 1;
    const what = `reload ${loads} at ${((Date.now() - start) / 1000).toFixed(1)} s`;
    for (const t of await parallelFetches(page, what)) fetched.add(t);
    const mark = run.navigations.length;
    const resp = await page.reload({ waitUntil: 'load', timeout: STEP_MS });
    const navs = run.navigationsSince(mark, page);
    check(
      navs.length === 1 && sameUrl(navs[0].url, target),
      `${what}: left the app page: ${navs.map((n) => n.url).join(' -> ')}`,
    );
    check(resp && resp.status() === 200 && origin(resp.url()) === GATEWAY, `${what}: answered ${resp?.status()} at ${resp?.url()}`);
    check(sameUrl(page.url(), target), `${what}: at ${page.url()}`);
    check(!(await visible(page.locator(SELECTORS.login))), `${what}: the provider's login form is shown`);
    const json = await echoed(resp, what);
    check(json.target === STAY_PATH, `${what}: the app saw ${json.target}`);
    check(json.headers?.['x-forwarded-user'] === LOGIN_USER, `${what}: the app saw user ${json.headers?.['x-forwarded-user']}`);
    const token = appToken(json, what);
    if (token !== tokens.at(-1).token) {
      tokens.push({ at: (Date.now() - start) / 1000, token });
      await run.snap(page);
    }
  }
  await run.snap(page);
  responses.stop();
  const distinct = new Set(tokens.map((t) => t.token)).size;
  console.error(
    `  (stays-signed-in: ${loads} reloads and ${loads * PARALLEL_FETCHES} fetches over ${((Date.now() - start) / 1000).toFixed(1)} s; ` +
      `fetches saw ${fetched.size} distinct access tokens; reloads saw ` +
      `${distinct} distinct access tokens: ${tokens.map((t) => `${t.at.toFixed(1)}s ${fingerprint(t.token)}`).join(', ')})`,
  );
  check(distinct === tokens.length, 'an access token came back after it had been replaced');
  check(distinct >= MIN_ACCESS_TOKENS, `only ${distinct} distinct access tokens over ${STAY_MS / 1000} s (want ${MIN_ACCESS_TOKENS})`);
}

/**
 * Logs in, has the provider end the sign-in (its test-only admin route: grants and provider
 * sessions revoked), waits past the access token's life, reloads: the gateway's refresh is
 * refused, and the browser lands on the provider's login form (a fresh login, not an error
 * page). Logging in again brings the app page back, with a new access token.
 */
async function refreshTokenRevoked(run) {
  needGateway();
  needProvider();
  check(REVOKE_URL, 'REVOKE_URL is not set');
  const page = await run.newPage();
  const target = GATEWAY + REVOKED_PATH;
  await loginThroughGateway(run, page, REVOKED_PATH, LOGIN_USER);
  const loggedInAt = Date.now();
  const before = appToken(await echoed(run.responses.get(page), 'after login'), 'after login');

  const resp = await fetch(REVOKE_URL, { method: 'POST' });
  const revoked = await resp.json().catch(() => ({}));
  check(resp.status === 200 && revoked.grants >= 1, `revocation at the provider: ${resp.status} ${JSON.stringify(revoked)}`);
  console.error(`  (refresh-token-revoked: provider revoked ${JSON.stringify(revoked)})`);

  // Past the access token's life: the gateway must ask the provider, which refuses.
  const wait = loggedInAt + ACCESS_TTL_MS + 1000 - Date.now();
  if (wait > 0) await page.waitForTimeout(wait);

  const responses = recordResponses(page);
  const mark = run.navigations.length;
  await gotoLenient(page, target);
  const login = page.locator(SELECTORS.login);
  await login.waitFor({ state: 'visible', timeout: STEP_MS }).catch(() => {
    throw new Failure(`after revocation the app page did not lead to the provider's login form (at ${page.url()})`);
  });
  await run.snap(page);
  responses.stop();
  const navs = run.navigationsSince(mark, page);
  check(origin(page.url()) === PROVIDER, `the login form is not the provider's (at ${page.url()})`);
  check(navs.length && sameUrl(navs[0].url, target), `the first navigation was not the app page: ${navs.map((n) => n.url).join(' -> ')}`);
  const bad = responses.seen.filter((r) => r.status >= 400);
  check(!bad.length, `an error page on the way to the login: ${bad.map((r) => `${r.status} ${r.url}`).join(', ')}`);
  check(navs.length <= MAX_NAVIGATIONS_AFTER_LOGIN, `too many navigations: ${navs.map((n) => n.url).join(' -> ')}`);

  // The fresh login lands on the page that was asked for, with a new access token.
  await providerLogin(run, page, LOGIN_USER);
  await waitUrl(page, target, 'after the fresh login');
  await run.snap(page);
  const json = await echoed(run.responses.get(page), 'after the fresh login');
  check(json.headers?.['x-forwarded-user'] === LOGIN_USER, `after the fresh login the app saw user ${json.headers?.['x-forwarded-user']}`);
  check(appToken(json, 'after the fresh login') !== before, 'the fresh login did not bring a new access token');
}

// --- provider scenarios (no gateway needed) --------------------------------------------------------

function pkcePair() {
  const verifier = randomBytes(32).toString('base64url');
  const challenge = createHash('sha256').update(verifier).digest('base64url');
  return { verifier, challenge };
}

function authorizeUrl({ clientId = SMOKE_CLIENT_ID, scope = 'openid email profile groups', prompt, state, challenge }) {
  const u = new URL(`${PROVIDER}/auth`);
  u.searchParams.set('client_id', clientId);
  u.searchParams.set('response_type', 'code');
  u.searchParams.set('redirect_uri', SMOKE_REDIRECT_URI);
  u.searchParams.set('scope', scope);
  u.searchParams.set('state', state);
  u.searchParams.set('nonce', randomBytes(8).toString('hex'));
  u.searchParams.set('code_challenge', challenge);
  u.searchParams.set('code_challenge_method', 'S256');
  if (prompt) u.searchParams.set('prompt', prompt);
  return u.href;
}

/**
 * Intercepts the browser's requests to SMOKE_REDIRECT_URI / SMOKE_POST_LOGOUT_URI (nothing
 * listens there): `page.route` answers those following a form POST; the `request` event records
 * all of them, also the ones answering a `page.goto` redirect, which `route` does not see.
 */
async function interceptCallbacks(run) {
  run.callbacks = [];
  const isOurs = (u) => u.startsWith(SMOKE_REDIRECT_URI) || u.split('?')[0] === SMOKE_POST_LOGOUT_URI;
  await run.context.route(
    (u) => isOurs(u.href),
    (route) => route.fulfill({ status: 200, contentType: 'text/html', body: '<h1>callback reached</h1>' }),
  );
  run.context.on('request', (req) => {
    if (isOurs(req.url())) run.callbacks.push(req.url());
  });
}

async function waitCallback(run, page, state) {
  const deadline = Date.now() + STEP_MS;
  for (;;) {
    const hit = run.callbacks.find((u) => u.startsWith(SMOKE_REDIRECT_URI) && new URL(u).searchParams.get('state') === state);
    if (hit) return new URL(hit);
    check(Date.now() < deadline, `no redirect to ${SMOKE_REDIRECT_URI} with state ${state} (at ${page.url()})`);
    await page.waitForTimeout(50);
  }
}

async function redeem(code, verifier, { clientId = SMOKE_CLIENT_ID, secret } = {}) {
  const body = new URLSearchParams({
    grant_type: 'authorization_code',
    code,
    redirect_uri: SMOKE_REDIRECT_URI,
    code_verifier: verifier,
  });
  const headers = { 'content-type': 'application/x-www-form-urlencoded' };
  if (secret) {
    headers.authorization = `Basic ${Buffer.from(`${encodeURIComponent(clientId)}:${encodeURIComponent(secret)}`).toString('base64')}`;
  } else {
    body.set('client_id', clientId);
  }
  const resp = await fetch(`${PROVIDER}/token`, { method: 'POST', headers, body });
  const json = await resp.json();
  check(resp.status === 200, `token endpoint answered ${resp.status}: ${JSON.stringify(json)}`);
  return json;
}

function jwtPayload(jwt) {
  return JSON.parse(Buffer.from(jwt.split('.')[1], 'base64url').toString());
}

function checkCode(cb, state) {
  check(cb.searchParams.get('code'), `no code in ${cb.href}`);
  check(cb.searchParams.get('state') === state, `state mismatch in ${cb.href}`);
  check(cb.searchParams.get('iss') === PROVIDER, `iss ${cb.searchParams.get('iss')} != ${PROVIDER}`);
}

async function providerSmoke(run) {
  needProvider();
  await interceptCallbacks(run);
  const page = await run.newPage();

  // 1. Fresh browser: login form, consent, code at the redirect URI.
  const first = pkcePair();
  const state1 = randomBytes(8).toString('hex');
  await page.goto(authorizeUrl({ state: state1, challenge: first.challenge }), { waitUntil: 'load', timeout: STEP_MS });
  check(origin(page.url()) === PROVIDER && new URL(page.url()).pathname.startsWith('/interaction/'), `no interaction page (at ${page.url()})`);
  const mark = run.navigations.length;
  await providerLogin(run, page, LOGIN_USER);
  const cb1 = await waitCallback(run, page, state1);
  await run.snap(page);
  checkCode(cb1, state1);
  check(run.navigationsSince(mark, page).length <= 12, 'too many navigations during login');

  // The code redeems (PKCE verifier, public client); the ID token carries the claims.
  const tokens = await redeem(cb1.searchParams.get('code'), first.verifier);
  const id = jwtPayload(tokens.id_token);
  check(id.iss === PROVIDER && id.sub === LOGIN_USER, `ID token iss/sub: ${id.iss} ${id.sub}`);
  check(id.email === `${LOGIN_USER}@example.com` && id.email_verified === true, `ID token email: ${JSON.stringify(id)}`);
  check(id.preferred_username === LOGIN_USER, `ID token preferred_username: ${JSON.stringify(id)}`);
  if (LOGIN_USER === 'alice') {
    check(JSON.stringify(id.groups) === JSON.stringify(['admins', 'staff']), `ID token groups: ${JSON.stringify(id.groups)}`);
  }
  check(!tokens.refresh_token, 'a refresh token without offline_access');
  const me = await fetch(`${PROVIDER}/me`, { headers: { authorization: `Bearer ${tokens.access_token}` } });
  const claims = await me.json();
  check(me.status === 200 && claims.sub === LOGIN_USER && Array.isArray(claims.groups), `userinfo: ${me.status} ${JSON.stringify(claims)}`);

  // 2. Same browser again: provider session and grant are reused, no login form, no consent.
  const second = pkcePair();
  const state2 = randomBytes(8).toString('hex');
  await gotoLenient(page, authorizeUrl({ state: state2, challenge: second.challenge }));
  checkCode(await waitCallback(run, page, state2), state2);
  await run.snap(page);
  check(!(await visible(page.locator(SELECTORS.login))), 'login form shown although the provider session exists');

  // 3. RP-initiated logout: confirmation form, then back to the post-logout URI.
  const end = new URL(`${PROVIDER}/session/end`);
  end.searchParams.set('client_id', SMOKE_CLIENT_ID);
  end.searchParams.set('id_token_hint', tokens.id_token);
  end.searchParams.set('post_logout_redirect_uri', SMOKE_POST_LOGOUT_URI);
  end.searchParams.set('state', 'bye');
  await page.goto(end.href, { waitUntil: 'load', timeout: STEP_MS });
  const yes = page.locator(SELECTORS.logoutYes);
  await yes.waitFor({ state: 'visible', timeout: STEP_MS }).catch(() => {
    throw new Failure(`no logout confirmation (at ${page.url()})`);
  });
  await run.snap(page);
  await yes.click();
  const deadline = Date.now() + STEP_MS;
  while (!run.callbacks.some((u) => u.split('?')[0] === SMOKE_POST_LOGOUT_URI)) {
    check(Date.now() < deadline, `not sent to ${SMOKE_POST_LOGOUT_URI} after logout (at ${page.url()})`);
    await page.waitForTimeout(50);
  }
  const back = new URL(run.callbacks.find((u) => u.split('?')[0] === SMOKE_POST_LOGOUT_URI));
  check(back.searchParams.get('state') === 'bye', `post-logout redirect lost state: ${back.href}`);
  await run.snap(page);

  // 4. Logged out at the provider: the login form is shown again.
  const third = pkcePair();
  await page.goto(authorizeUrl({ state: 'again', challenge: third.challenge }), { waitUntil: 'load', timeout: STEP_MS });
  await page.locator(SELECTORS.login).waitFor({ state: 'visible', timeout: STEP_MS }).catch(() => {
    throw new Failure(`no login form after logout (at ${page.url()})`);
  });
  await run.snap(page);

  // 5. PKCE is required: an authorization request without code_challenge is refused.
  const noPkce = new URL(authorizeUrl({ state: 'nopkce', challenge: 'x' }));
  noPkce.searchParams.delete('code_challenge');
  noPkce.searchParams.delete('code_challenge_method');
  await gotoLenient(page, noPkce.href);
  const refused = run.callbacks.find((u) => u.startsWith(SMOKE_REDIRECT_URI) && new URL(u).searchParams.get('state') === 'nopkce');
  const refusedText = refused ? '' : await bodyText(page).catch(() => '');
  check(
    (refused && new URL(refused).searchParams.get('error') === 'invalid_request') || /code_challenge/i.test(refusedText),
    `an authorization request without PKCE was not refused (${refused ?? page.url()})`,
  );
  await run.snap(page);
}

/** Two tabs with pending logins at the provider: log in in tab 1, complete tab 2's stale form. */
async function providerTwoTabs(run) {
  needProvider();
  await interceptCallbacks(run);
  const tab1 = await run.newPage();
  const tab2 = await run.newPage();
  const p1 = pkcePair();
  const p2 = pkcePair();
  await tab1.goto(authorizeUrl({ state: 'tab1', challenge: p1.challenge }), { waitUntil: 'load', timeout: STEP_MS });
  await tab2.goto(authorizeUrl({ state: 'tab2', challenge: p2.challenge }), { waitUntil: 'load', timeout: STEP_MS });
  await providerLogin(run, tab1, LOGIN_USER);
  checkCode(await waitCallback(run, tab1, 'tab1'), 'tab1');
  await run.snap(tab1);
  await providerLogin(run, tab2, LOGIN_USER, { expectForm: false });
  const cb2 = await waitCallback(run, tab2, 'tab2');
  checkCode(cb2, 'tab2');
  await run.snap(tab2);
  await redeem(cb2.searchParams.get('code'), p2.verifier);
}

/** The confidential client gets a refresh token only with offline_access AND prompt=consent. */
async function providerRefresh(run) {
  needProvider();
  await interceptCallbacks(run);
  const page = await run.newPage();
  const p = pkcePair();
  const url = authorizeUrl({ clientId: 'gatehouse', scope: 'openid email offline_access', prompt: 'consent', state: 'rt', challenge: p.challenge });
  await page.goto(url, { waitUntil: 'load', timeout: STEP_MS });
  await providerLogin(run, page, 'bob');
  const cb = await waitCallback(run, page, 'rt');
  checkCode(cb, 'rt');
  await run.snap(page);
  const tokens = await redeem(cb.searchParams.get('code'), p.verifier, { clientId: 'gatehouse', secret: CLIENT_SECRET });
  check(tokens.refresh_token, `no refresh token: ${JSON.stringify(Object.keys(tokens))}`);
  const basic = `Basic ${Buffer.from(`gatehouse:${encodeURIComponent(CLIENT_SECRET)}`).toString('base64')}`;
  const resp = await fetch(`${PROVIDER}/token`, {
    method: 'POST',
    headers: { 'content-type': 'application/x-www-form-urlencoded', authorization: basic },
    body: new URLSearchParams({ grant_type: 'refresh_token', refresh_token: tokens.refresh_token }),
  });
  const refreshed = await resp.json();
  check(resp.status === 200 && refreshed.access_token, `refresh grant: ${resp.status} ${JSON.stringify(refreshed)}`);
  check(jwtPayload(refreshed.id_token).sub === 'bob', 'refreshed ID token sub');
}

// --- runner ------------------------------------------------------------------------------------------

// `gatehouse demo`: a person opens the printed URL, signs in at the built-in development
// provider (any name, some groups) and lands on the echo page, which shows who the app sees and
// a sign-out link; signing out ends the session.
async function demoLogin(run) {
  needGateway();
  const page = await run.newPage();
  await page.goto(GATEWAY + '/hello?from=demo', { waitUntil: 'load', timeout: STEP_MS });
  await run.snap(page);
  await page.fill('#username', 'alice');
  await page.check('input[name="groups"][value="admins"]');
  await run.snap(page);
  await Promise.all([
    page.waitForURL((u) => origin(u.toString()) === GATEWAY, { timeout: STEP_MS }),
    page.click('button[name="action"][value="login"]'),
  ]);
  await page.waitForLoadState('load');
  await run.snap(page);
  check(sameUrl(page.url(), GATEWAY + '/hello?from=demo'), `landed on ${page.url()}`);
  const text = await bodyText(page);
  check(text.includes('alice'), 'the echo page does not show alice');
  check(text.includes('admins'), 'the echo page does not show the admins group');
  const signOut = page.locator('a[href$="/oauth2/sign_out"]');
  check(await visible(signOut), 'no sign-out link on the echo page');
  await signOut.click();
  await page.waitForLoadState('load');
  await run.snap(page);
  const after = await page.goto(GATEWAY + '/oauth2/userinfo', { waitUntil: 'load', timeout: STEP_MS });
  check(after && after.status() === 401, `userinfo after sign-out answered ${after?.status()}`);
}

const SCENARIOS = {
  'deep-link-login': { run: deepLinkLogin, needs: 'gateway' },
  'sign-out': { run: signOut, needs: 'gateway' },
  'two-tabs': { run: twoTabs, needs: 'gateway' },
  'forbidden-group': { run: forbiddenGroup, needs: 'gateway' },
  'public-route': { run: publicRoute, needs: 'gateway' },
  'demo-login': { run: demoLogin, needs: 'gateway', explicit: true },
  // These two need a gateway configured for refresh tokens and pass_access_token, and the
  // provider's admin route: tests/it/browser.rs names them.
  'stays-signed-in': { run: staysSignedIn, needs: 'gateway', explicit: true },
  'refresh-token-revoked': { run: refreshTokenRevoked, needs: 'gateway', explicit: true },
  'provider-smoke': { run: providerSmoke, needs: 'provider' },
  'provider-two-tabs': { run: providerTwoTabs, needs: 'provider' },
  'provider-refresh': { run: providerRefresh, needs: 'provider' },
};

function selected() {
  const args = process.argv.slice(2);
  if (args.length) {
    const unknown = args.filter((a) => !SCENARIOS[a]);
    if (unknown.length) {
      console.error(`unknown scenario(s): ${unknown.join(', ')}; known: ${Object.keys(SCENARIOS).join(', ')}`);
      process.exit(2);
    }
    return args;
  }
  // With GATEWAY_URL: the gateway scenarios (PROVIDER_URL then only sharpens their checks).
  // Without it: the provider scenarios, against PROVIDER_URL.
  const wanted = GATEWAY ? 'gateway' : PROVIDER ? 'provider' : undefined;
  // Scenarios marked `explicit` (the demo's) run only when named.
  const names = Object.keys(SCENARIOS).filter((n) => SCENARIOS[n].needs === wanted && !SCENARIOS[n].explicit);
  if (!names.length) {
    console.error('set GATEWAY_URL (gateway scenarios) and/or PROVIDER_URL (provider scenarios)');
    process.exit(2);
  }
  return names;
}

async function runScenario(browser, name) {
  for (const f of readdirSync(ARTIFACTS)) {
    if (f.startsWith(`${name}-`) && f.endsWith('.png')) rmSync(path.join(ARTIFACTS, f), { force: true });
  }
  const context = await browser.newContext({ viewport: { width: 1000, height: 700 } });
  context.setDefaultTimeout(STEP_MS);
  context.setDefaultNavigationTimeout(STEP_MS);
  const run = new Run(name, context);
  let timer;
  const timeout = new Promise((_, reject) => {
    timer = setTimeout(() => reject(new Failure(`timed out after ${SCENARIO_MS / 1000} s`)), SCENARIO_MS);
  });
  try {
    await Promise.race([SCENARIOS[name].run(run), timeout]);
    return null;
  } catch (err) {
    for (const page of run.pages) {
      if (!page.isClosed()) await run.snap(page);
    }
    const where = run.navigations.length ? ` [navigations: ${run.navigations.map((n) => n.url).join(' -> ')}]` : '';
    if (!(err instanceof Failure)) console.error(err?.stack ?? err);
    return `${firstLine(err)}${err instanceof Failure ? '' : where}`;
  } finally {
    clearTimeout(timer);
    await context.close().catch(() => {});
  }
}

async function main() {
  const names = selected();
  mkdirSync(ARTIFACTS, { recursive: true });
  const browser = await chromium.launch({ executablePath: CHROMIUM, headless: true, args: CHROMIUM_ARGS, timeout: 30_000 });
  let passed = 0;
  let failed = 0;
  try {
    for (const name of names) {
      const reason = await runScenario(browser, name);
      if (reason === null) {
        passed += 1;
        console.log(`ok ${name}`);
      } else {
        failed += 1;
        console.log(`FAIL ${name}: ${reason}`);
      }
    }
  } finally {
    await browser.close().catch(() => {});
  }
  console.log(`${passed} passed, ${failed} failed`);
  process.exitCode = failed ? 1 : 0;
}

main().catch((err) => {
  console.error(err?.stack ?? err);
  console.log('0 passed, 1 failed');
  process.exit(1);
});
