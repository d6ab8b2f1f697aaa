// Browser tests of the admin console (issue 8): headless Debian chromium driven by playwright-core.
// Run by tests/Ferry.IntegrationTests/ConsoleBrowserTests.cs, which starts the controller, creates the operator and passes:
//   FERRY_URL, FERRY_OPERATOR, FERRY_PASSWORD, FERRY_TOTP_SECRET (base32), FERRY_BINARY (the ferry executable),
//   FERRY_WORKDIR (a scratch folder), FERRY_SCREENSHOTS (where the page screenshots go).
import { test, after } from 'node:test';
import assert from 'node:assert/strict';
import { createHmac } from 'node:crypto';
import { spawn } from 'node:child_process';
import { writeFileSync, mkdirSync } from 'node:fs';
import { join } from 'node:path';
import { chromium } from 'playwright-core';

const env = (name) => process.env[name] ?? assert.fail(`${name} is not set; run these tests through ConsoleBrowserTests`);
const url = env('FERRY_URL');
const operator = env('FERRY_OPERATOR');
const password = env('FERRY_PASSWORD');
const secret = base32(env('FERRY_TOTP_SECRET'));
const screenshots = env('FERRY_SCREENSHOTS');
mkdirSync(screenshots, { recursive: true });

const children = [];
let browser;
after(async () => {
  for (const child of children) child.kill('SIGKILL');
  await browser?.close();
});

/** RFC 6238 code for the current 30 s step (or a neighbouring one), as an authenticator app shows it. */
function totp(offsetSteps = 0) {
  const counter = Buffer.alloc(8);
  counter.writeBigInt64BE(BigInt(Math.floor(Date.now() / 1000 / 30) + offsetSteps));
  const mac = createHmac('sha1', secret).update(counter).digest();
  const offset = mac[mac.length - 1] & 0x0f;
  return String((mac.readUInt32BE(offset) & 0x7fffffff) % 1_000_000).padStart(6, '0');
}

function base32(text) {
  const alphabet = 'ABCDEFGHIJKLMNOPQRSTUVWXYZ234567';
  let bits = 0, value = 0;
  const out = [];
  for (const c of text.replace(/[\s=]/g, '').toUpperCase()) {
    value = (value << 5) | alphabet.indexOf(c);
    bits += 5;
    if (bits >= 8) { out.push((value >>> (bits - 8)) & 0xff); bits -= 8; }
  }
  return Buffer.from(out);
}

/** A code that is none of those current around now. */
function wrongCode() {
  const current = new Set([-1, 0, 1].map(totp));
  return ['111111', '222222', '333333', '444444'].find((c) => !current.has(c));
}

async function shot(page, name) {
  await page.screenshot({ path: join(screenshots, `${name}.png`), fullPage: true });
}

test('an operator signs in, provisions a connector, watches it come online, grants a resource and sees the audit log', { timeout: 240_000 }, async () => {
  browser = await chromium.launch({
    executablePath: '/usr/bin/chromium',
    // Without the background-networking switches Chromium keeps dialling Google's hosts, which this closed network refuses.
    args: ['--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run', '--disable-background-networking', '--disable-component-update', '--disable-sync'],
  });
  // The controller's certificate is self-signed (clients pin its fingerprint); the browser is told to accept it.
  const context = await browser.newContext({ ignoreHTTPSErrors: true, viewport: { width: 1280, height: 860 } });
  const origin = new URL(url).origin;
  const external = [];
  await context.route('**/*', (route) => {
    if (new URL(route.request().url()).origin !== origin) {
      external.push(route.request().url());
      return route.abort();
    }
    return route.continue();
  });
  const page = await context.newPage();
  const scriptErrors = [];
  page.on('pageerror', (e) => scriptErrors.push(e.message));
  // Refusals this test provokes on purpose (401 sign-ins, 400 forged post and bad ports) are logged as failed loads, not script errors.
  page.on('console', (m) => { if (m.type() === 'error' && !m.text().startsWith('Failed to load resource')) scriptErrors.push(m.text()); });

  // Sign-in: a wrong password and a wrong code are refused with one message; the right pair gets in.
  await page.goto(`${url}/console/`);
  assert.match(page.url(), /\/console\/login/);
  await shot(page, '01-sign-in');
  const signIn = async (pw, code) => {
    await page.getByLabel('Operator').fill(operator);
    await page.getByLabel('Password').fill(pw);
    await page.getByLabel('Code from your authenticator app').fill(code);
    await page.getByRole('button', { name: 'Sign in' }).click();
  };
  await signIn('not the password', totp());
  await page.getByRole('alert').filter({ hasText: 'Sign-in failed' }).waitFor();
  await signIn(password, wrongCode());
  await page.getByRole('alert').filter({ hasText: 'Sign-in failed' }).waitFor();
  await signIn(password, totp());
  await page.waitForURL(/\/console\/(#.*)?$/);

  // A forged change: the session cookie rides along, but without the page's token the controller refuses it.
  const forged = await page.evaluate(async () => (await fetch('/api/v1/networks', {
    method: 'POST', headers: { 'Content-Type': 'application/json' }, body: JSON.stringify({ name: 'forged' }),
  })).status);
  assert.equal(forged, 400);

  // A network, then a connector provisioned from the page: the tokens shown once start the real daemon.
  await page.getByTestId('nav-networks').click();
  const networkForm = page.getByTestId('form-network');
  await networkForm.getByLabel(/name/i).first().fill('corp');
  await networkForm.getByRole('button').click();
  await page.getByRole('heading', { name: 'corp' }).waitFor();

  const connectorForm = page.getByTestId('form-connector');
  if (!(await connectorForm.isVisible())) {
    await page.getByRole('button', { name: /Provision connector/ }).first().click();
  }
  await connectorForm.getByLabel(/name/i).first().fill('c1');
  await connectorForm.getByLabel(/location/i).fill('52.37,4.90');
  const networkSelect = connectorForm.getByLabel(/network/i);
  if (await networkSelect.count()) await networkSelect.selectOption('corp');
  await connectorForm.getByRole('button', { name: /provision/i }).click();
  const provisioned = page.getByTestId('provisioned');
  await provisioned.waitFor();
  const tokens = JSON.parse(await provisioned.getByTestId('tokens-json').textContent());
  assert.equal(tokens.name, 'c1');
  for (const label of ['Plain process', 'systemd', 'Container']) {
    assert.ok((await provisioned.textContent()).includes(label), `deploy instructions for ${label}`);
  }
  await shot(page, '02-connector-provisioned');
  const workdir = env('FERRY_WORKDIR');
  const tokensPath = join(workdir, 'c1.tokens.json');
  writeFileSync(tokensPath, JSON.stringify(tokens), { mode: 0o600 });
  const connector = spawn(env('FERRY_BINARY'), ['connector', '--tokens', tokensPath], { stdio: ['ignore', 'pipe', 'pipe'] });
  children.push(connector);
  let connectorLog = '';
  connector.stdout.on('data', (d) => { connectorLog += d; });
  connector.stderr.on('data', (d) => { connectorLog += d; });
  const done = provisioned.getByRole('button', { name: 'Done' });
  if (await done.count()) await done.click();

  // It comes online on the page by itself: no reload, the page polls.
  const navigations = [];
  page.on('framenavigated', (frame) => { if (frame === page.mainFrame()) navigations.push(frame.url()); });
  const state = page.locator('[data-connector="c1"] [data-field="state"]');
  try {
    await state.filter({ hasText: 'online' }).waitFor({ timeout: 40_000 });
  } catch (e) {
    assert.fail(`connector c1 never showed online on the page: ${e.message}\nconnector log:\n${connectorLog}`);
  }
  assert.deepEqual(navigations.filter((u) => !u.includes('#')), [], 'the page must not have reloaded');
  await shot(page, '03-networks');

  await page.getByRole('link', { name: 'c1' }).first().click();
  await page.getByText('52.37,4.90').first().waitFor();
  await shot(page, '04-connector-detail');

  // A resource: a bad port list is refused next to its field, then a good one is added.
  await page.getByTestId('nav-resources').click();
  const resourceForm = page.getByTestId('form-resource');
  await resourceForm.getByLabel(/network/i).selectOption('corp');
  await resourceForm.getByLabel(/address/i).fill('db.corp.internal');
  await resourceForm.getByLabel(/^name/i).fill('db');
  await resourceForm.getByLabel(/tcp/i).fill('80-22');
  await resourceForm.getByRole('button').click();
  const tcpField = resourceForm.getByLabel(/tcp/i);
  await page.waitForFunction((el) => el.getAttribute('aria-invalid') === 'true', await tcpField.elementHandle());
  const describedBy = await tcpField.getAttribute('aria-describedby');
  assert.match(await page.locator(`#${describedBy}`).textContent(), /runs backwards/);
  await shot(page, '05-resource-validation');
  await tcpField.fill('5432');
  await resourceForm.getByRole('button').click();
  await page.getByTestId('resources-table').getByText('db.corp.internal').waitFor();

  // Edited in place: a bad value is refused next to its field, a good one shows in the table.
  await page.getByRole('button', { name: 'Edit resource db' }).click();
  const editForm = page.getByTestId('form-resource-edit');
  const editTcp = editForm.getByLabel('TCP ports');
  await editTcp.fill('70000');
  await editForm.getByRole('button', { name: 'Save' }).click();
  await page.waitForFunction((el) => el.getAttribute('aria-invalid') === 'true', await editTcp.elementHandle());
  assert.match(await page.locator(`#${await editTcp.getAttribute('aria-describedby')}`).textContent(), /70000/);
  await editTcp.fill('5432,6432');
  await editForm.getByRole('button', { name: 'Save' }).click();
  await page.getByTestId('resources-table').getByText('5432,6432').waitFor();

  // A group and a policy granting the resource to it.
  await page.getByTestId('nav-users').click();
  const groupForm = page.getByTestId('form-group');
  await groupForm.getByLabel(/name/i).fill('eng');
  await groupForm.getByRole('button').click();
  await page.getByText('eng', { exact: true }).first().waitFor();
  await page.getByTestId('nav-policies').click();
  const policyForm = page.getByTestId('form-policy');
  await policyForm.getByLabel('Resource', { exact: true }).selectOption('db');
  await policyForm.getByLabel('Grantee type', { exact: true }).selectOption('group');
  await policyForm.getByLabel('Grantee', { exact: true }).selectOption('eng');
  await policyForm.getByRole('button').click();
  await page.getByTestId('policies-table').getByText('eng').waitFor();
  await shot(page, '06-policies');

  // Every change is in the audit log, by this operator.
  await page.getByTestId('nav-audit').click();
  const audit = page.getByTestId('audit-table');
  for (const action of ['network.create', 'connector.provision', 'resource.add', 'resource.update', 'group.create', 'policy.grant']) {
    await audit.locator(`[data-action="${action}"]`).first().waitFor();
  }
  assert.ok((await audit.textContent()).includes(`operator ${operator}`));
  await shot(page, '07-audit');

  for (const [nav, table, name] of [['nav-devices', 'devices-table', '08-devices'], ['nav-relays', 'relays-table', '09-relays']]) {
    await page.getByTestId(nav).click();
    await page.getByTestId(table).waitFor();
    await shot(page, name);
  }

  // The same console on a phone-sized screen.
  await page.setViewportSize({ width: 390, height: 844 });
  await page.getByTestId('nav-networks').click();
  await page.locator('[data-connector="c1"]').first().waitFor();
  await shot(page, '10-networks-phone');

  assert.deepEqual(external, [], 'the console must fetch nothing from elsewhere');
  assert.deepEqual(scriptErrors, [], 'the console must run without script errors');
});
