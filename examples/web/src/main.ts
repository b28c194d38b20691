// The page's script: wires the form to heed.ts and shows what it did.
import { ConnectError } from "@connectrpc/connect";

import { openDepositRead } from "./heed.js";

function element<T extends HTMLElement>(id: string): T {
  const el = document.getElementById(id);
  if (el === null) {
    throw new Error(`no #${id} on the page`);
  }
  return el as T;
}

const form = element<HTMLFormElement>("form");
const server = element<HTMLInputElement>("server");
const token = element<HTMLInputElement>("token");
const account = element<HTMLInputElement>("account");
const amount = element<HTMLInputElement>("amount");
const balance = element<HTMLOutputElement>("balance");
const status = element<HTMLParagraphElement>("status");
const log = element<HTMLDivElement>("log");

// ?server=...&token=... preset the form (the test serves the page so).
const params = new URLSearchParams(location.search);
server.value = params.get("server") ?? server.value;
token.value = params.get("token") ?? token.value;

form.addEventListener("submit", (ev) => {
  ev.preventDefault();
  void run();
});

async function run(): Promise<void> {
  balance.dataset.state = "running";
  balance.textContent = "…";
  status.textContent = "";
  log.textContent = "";
  try {
    const got = await openDepositRead({
      baseUrl: server.value,
      token: token.value,
      accountId: account.value,
      amount: BigInt(amount.value),
      log: (line) => {
        log.textContent += line + "\n";
      },
    });
    balance.textContent = got.balance.toString();
    status.textContent = `deposit ${got.depositStatus}`;
    balance.dataset.state = "done";
  } catch (err) {
    const e = ConnectError.from(err);
    balance.textContent = "error";
    status.textContent = e.message;
    balance.dataset.state = "error";
  }
}
