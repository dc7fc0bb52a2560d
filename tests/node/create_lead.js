// A CRM written in Node.js: from the .proto files alone, create a campaign-tagged lead through the
// xsell gateway and read it back. Prints one JSON line of what it saw; exits non-zero on any surprise.
// Usage: XSELL_GATEWAY=host:port XSELL_API_KEY=xsk_... node create_lead.js <protos dir> <campaign ID> <CRM lead id>
"use strict";

const grpc = require("@grpc/grpc-js");
const protoLoader = require("@grpc/proto-loader");
const path = require("path");

const [protosDir, campaignId, crmLeadId] = process.argv.slice(2);
const definition = protoLoader.loadSync(path.join(protosDir, "xsell/attribution/v1/service.proto"), {
  includeDirs: [protosDir],
  keepCase: true,
  enums: String,
  longs: String,
  defaults: true,
});
const attribution = grpc.loadPackageDefinition(definition).xsell.attribution.v1;
const client = new attribution.AttributionService(process.env.XSELL_GATEWAY, grpc.credentials.createInsecure());

function call(method, request, apiKey) {
  const metadata = new grpc.Metadata();
  if (apiKey) metadata.set("x-api-key", apiKey);
  const deadline = new Date(Date.now() + 10000);
  return new Promise((resolve, reject) => {
    client[method](request, metadata, { deadline }, (error, response) => (error ? reject(error) : resolve(response)));
  });
}

async function main() {
  const key = process.env.XSELL_API_KEY;
  const request = { request_id: `node-${crmLeadId}`, campaign_id: campaignId, crm_lead_id: crmLeadId, origin: "LEAD_ORIGIN_CRM" };
  const created = (await call("CreateLead", request, key)).lead;
  // The same request_id again is answered with the first lead, not a second one.
  const retried = (await call("CreateLead", request, key)).lead;
  const attributionView = (await call("GetCampaignAttribution", { campaign_id: campaignId }, key)).attribution;
  let unauthenticated = null;
  try {
    await call("CreateLead", { ...request, request_id: `node-nokey-${crmLeadId}` }, null);
  } catch (error) {
    unauthenticated = { code: error.code, details: error.details };
  }
  console.log(JSON.stringify({ created, retried, attribution: attributionView, unauthenticated }));
}

main()
  .catch((error) => {
    console.error(`error: ${error.code} ${error.details || error.message}`);
    process.exitCode = 1;
  })
  .finally(() => client.close());
