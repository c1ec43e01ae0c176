// The operator's pages in a real browser (headless Chromium through playwright-core): Swagger UI at /docs
// lists the API's operations; the dashboard at /dashboard goes live with the admin token, shows an order
// placed while it is open (the accepted total and the commodity's deducted stock), runs the audit from its
// button and shows the verdict. Writes a screenshot of each page. Run by scripts/browser-check.
//
//   node tests/browser/check.mjs <base url> <admin token> <buyer token> <screenshot dir>
import { chromium } from "playwright-core";

const [base, adminToken, buyerToken, shots] = process.argv.slice(2);
const executablePath = process.env.CHROMIUM || "/usr/bin/chromium";
const fail = (message) => { console.error("browser-check: FAIL: " + message); process.exit(1); };

// On a timeout: what the page said, its errors, and a screenshot of it.
async function explain(page, errors, what, error) {
  await page.screenshot({ path: shots + "/failed.png", fullPage: true }).catch(() => {});
  const status = await page.textContent("#status").catch(() => "(no status)");
  fail(`${what}: ${error.message.split("\n")[0]}; status "${status}"; page errors: ${errors.join("; ") || "none"}`);
}

const browser = await chromium.launch({ executablePath, args: ["--no-sandbox", "--disable-gpu"] });
try {
  const page = await browser.newPage({ viewport: { width: 1400, height: 900 } });
  const errors = [];
  page.on("pageerror", (error) => errors.push(String(error)));
  page.on("console", (message) => { if (message.type() === "error") errors.push(message.text()); });

  // Swagger UI renders the document: one block per operation.
  await page.goto(base + "/docs/");
  await page.waitForSelector(".opblock", { timeout: 20000 });
  const operations = await page.locator(".opblock").count();
  const spec = await (await fetch(base + "/api/openapi.json")).json();
  const documented = Object.values(spec.paths).reduce((n, item) => n + Object.keys(item).length, 0);
  if (operations !== documented) fail(`Swagger UI shows ${operations} operations, the document has ${documented}`);
  await page.screenshot({ path: shots + "/swagger.png" });
  console.log(`browser-check: /docs shows all ${operations} operations`);

  // The dashboard, live with the admin token from the URL's fragment.
  await page.goto(base + "/dashboard#token=" + encodeURIComponent(adminToken));
  await page.waitForFunction(() => document.getElementById("status").className === "live", null, { timeout: 20000 })
    .catch((error) => explain(page, errors, "the dashboard did not go live", error));
  if (page.url().includes("token=")) fail("the token stayed in the address bar");
  const before = Number((await page.textContent("#accepted-total")).replace(/\D/g, ""));

  // An order placed while the page is open.
  const body = {
    uid: 1, to_uid: 2, origin_price: 29.99, actual_price: 29.99, pay_at_once: false,
    commodity_details: [{ actual_price: 29.99, commodity_id: 1, prices: 29.99, user_id: 100001, num: 2 }],
  };
  const placed = await fetch(base + "/api/orders", {
    method: "POST",
    headers: { authorization: "Bearer " + buyerToken, "content-type": "application/json" },
    body: JSON.stringify(body),
  });
  if (placed.status !== 200) fail(`placing the order answered ${placed.status}: ${await placed.text()}`);
  const orderNo = (await placed.json()).data.order_no[0];
  console.log(`browser-check: placed order ${orderNo} (2 units of commodity 1)`);
  await page.waitForFunction(
    (expected) => Number(document.getElementById("accepted-total").textContent.replace(/\D/g, "")) >= expected,
    before + 1, { timeout: 20000 });
  // Created by the worker: its units are deducted in the store.
  await page.waitForFunction(() => {
    const row = document.querySelector('#hot tr[data-commodity="1"]');
    return row && Number(row.cells[1].textContent.replace(/\D/g, "")) >= 2;
  }, null, { timeout: 20000 });

  // The audit from the page's button: a verdict and the order states.
  await page.click("#run-audit");
  await page.waitForSelector("#audit .verdict-ok, #audit .verdict-bad", { timeout: 30000 });
  const verdict = await page.textContent("#audit");
  if (!verdict.startsWith("clean")) fail("the audit's verdict: " + verdict);
  await page.waitForFunction(() => /to pay/.test(document.getElementById("states").textContent), null, { timeout: 10000 });
  // A second of load for the charts, then the picture.
  await page.waitForTimeout(2500);
  await page.screenshot({ path: shots + "/dashboard.png", fullPage: true });
  if (errors.length) fail("errors in the page: " + errors.join("; "));
  console.log(`browser-check: /dashboard live, shows the order (accepted total ${before} → ${before + 1}), audit ${verdict.split(" ")[0]}`);
} finally {
  await browser.close();
}
