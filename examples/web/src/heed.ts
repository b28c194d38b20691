// heed's client side of the walkthrough: open an account, deposit, read the
// balance with the deposit's consistency token, and ask what became of the
// deposit, over the Connect protocol (JSON) with heed's generated services.
import { createRegistry, isMessage } from "@bufbuild/protobuf";
import { anyUnpack } from "@bufbuild/protobuf/wkt";
import { createClient, type Interceptor } from "@connectrpc/connect";
import { createConnectTransport } from "@connectrpc/connect-web";

import { CommandService, CommandStatus } from "./gen/heed/command/v1/command_pb.js";
import { CommandResultSchema, file_heed_ledger_v1_events } from "./gen/heed/ledger/v1/events_pb.js";
import { LedgerService } from "./gen/heed/ledger/v1/ledger_pb.js";

// registry resolves the domain's result that CommandService answers in a
// google.protobuf.Any (heed.ledger.v1.CommandResult): JSON needs it to
// decode the answer at all.
const registry = createRegistry(file_heed_ledger_v1_events);

export interface Run {
  // heed's address as the browser reaches it, e.g. http://127.0.0.1:8080.
  baseUrl: string;
  // A bearer token from `heed token new`, or "" when heed runs without
  // --auth-tokens-file.
  token: string;
  accountId: string;
  // Minor units (cents), more than 0.
  amount: bigint;
  log: (line: string) => void;
}

export interface Result {
  // The balance GetAccount read once the deposit was applied.
  balance: bigint;
  // What CommandService says became of the deposit, e.g. APPLIED.
  depositStatus: string;
}

// requestId is a fresh idempotency key. A retry of the same command must
// send the same one; this page never retries.
function requestId(): string {
  const b = new Uint8Array(16);
  crypto.getRandomValues(b);
  return Array.from(b, (x) => x.toString(16).padStart(2, "0")).join("");
}

// openDepositRead runs the walkthrough against the heed at run.baseUrl, which
// must list this page's origin in --cors-allowed-origins.
export async function openDepositRead(run: Run): Promise<Result> {
  const auth: Interceptor = (next) => (req) => {
    if (run.token !== "") {
      req.header.set("Authorization", `Bearer ${run.token}`);
    }
    return next(req);
  };
  const transport = createConnectTransport({ baseUrl: run.baseUrl, interceptors: [auth], jsonOptions: { registry } });
  const ledger = createClient(LedgerService, transport);
  const commands = createClient(CommandService, transport);

  const opened = await ledger.openAccount({ requestId: requestId(), accountId: run.accountId });
  run.log(`OpenAccount: event ${opened.eventId}`);
  const depositId = requestId();
  const deposited = await ledger.deposit({ requestId: depositId, accountId: run.accountId, amount: run.amount });
  run.log(`Deposit ${run.amount}: event ${deposited.eventId}, consistency token ${deposited.consistencyToken}`);

  // With the token, the read waits until the deposit is applied (at most
  // heed's --read-wait-max): the page reads its own write.
  const read = await ledger.getAccount({ accountId: run.accountId, consistencyToken: deposited.consistencyToken });
  const balance = read.account?.balance ?? 0n;
  run.log(`GetAccount: balance ${balance}`);

  const result = await commands.getCommandResult({
    ref: { case: "requestId", value: depositId },
    key: run.accountId,
    consistencyToken: deposited.consistencyToken,
  });
  const depositStatus = (CommandStatus[result.status] ?? String(result.status)).replace(/^COMMAND_STATUS_/, "");
  run.log(`GetCommandResult: ${depositStatus}${result.reason ? ` (${result.reason})` : ""}`);
  const ledgerResult = result.result ? anyUnpack(result.result, registry) : undefined;
  if (ledgerResult !== undefined && isMessage(ledgerResult, CommandResultSchema)) {
    run.log(`the deposit's result: balance after ${ledgerResult.balanceAfter}`);
  }
  return { balance, depositStatus };
}
