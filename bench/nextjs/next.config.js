/** The seed's proxy, built for the benchmark. */
module.exports = { reactStrictMode: true, typescript: { ignoreBuildErrors: true }, eslint: { ignoreDuringBuilds: true } };
