// Runs the Perses Pyroscope plugin's own client (npm @perses-dev/pyroscope-plugin: its CommonJS
// build, lib/cjs/model/pyroscope-client.js, and the profile query's getProfileData, which calls
// GET /pyroscope/render and turns Pyroscope's flamebearer into Perses' stack trace tree) under
// plain Node against a flamewatch server, making the calls the plugin's editors and panels make.
// Prints one JSON document; tests/aggregator/test_pyroscope_clients.py checks it against /api/v1.
//
// usage: node perses_client.cjs DEPS_DIR URL TOKEN FROM UNTIL SERVICE PROFILE_TYPE
'use strict';

const [deps, url, token, from, until, service, profileType] = process.argv.slice(2);
const load = (m) => require(require.resolve(m, { paths: [deps] }));
const client = load('@perses-dev/pyroscope-plugin/lib/cjs/model/pyroscope-client.js');
const { getProfileData } = load('@perses-dev/pyroscope-plugin/lib/cjs/plugins/pyroscope-profile-query/get-profile-data.js');

// The datasource spec's proxy headers (what createClient passes when a call gives none).
const specHeaders = token ? { Authorization: `Bearer ${token}` } : {};
const opts = (headers) => ({ datasourceUrl: url, headers: { ...specHeaders, ...(headers || {}) } });
const json = { 'content-type': 'application/json' };

function paths(node, prefix, out) {
  const here = [...prefix, node.name];
  out[here.join(';')] = (out[here.join(';')] || 0) + node.total;
  for (const child of node.children) paths(child, here, out);
  return out;
}

(async () => {
  const out = {};
  // The plugin's hooks (utils/use-query.js) post these bodies with these headers.
  out.profileTypes = await client.searchProfileTypes({}, opts(json), {});
  out.labelNames = await client.searchLabelNames({}, opts(json), {});
  out.labelValues = await client.searchLabelValues({}, opts(json), { name: 'pod' });
  out.services = await client.searchServices({}, opts(json));
  const datasourceStore = {
    getDatasourceClient: async () => ({
      searchProfiles: (params, headers) => client.searchProfiles(params, opts(headers)),
    }),
  };
  const data = await getProfileData(
    { profileType, service, maxNodes: 1000 },
    { datasourceStore, absoluteTimeRange: { start: new Date(from * 1000), end: new Date(until * 1000) } },
  );
  out.profile = {
    numTicks: data.numTicks, maxSelf: data.maxSelf, metadata: data.metadata, timeline: data.timeline,
    paths: paths(data.profile.stackTrace, [], {}),
  };
  process.stdout.write(JSON.stringify(out) + '\n');
})().catch((e) => {
  console.error(e && e.stack ? e.stack : e);
  process.exit(1);
});
