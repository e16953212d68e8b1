// The seed's design (the proxy sora2proxy replaces): one fetch per try, an
// AbortController timeout, three tries whatever the method, "Proxy request failed".
const API_URL = process.env.API_URL || "http://localhost:3101/api";

async function proxy(request: Request, { params }: { params: Promise<{ path: string[] }> }) {
  const { path } = await params;
  const url = new URL(request.url);
  const target = `${API_URL}/${path.join("/")}${url.search}`;
  const body = ["GET", "HEAD"].includes(request.method) ? undefined : await request.arrayBuffer();
  let lastError: unknown;
  for (let attempt = 1; attempt <= 3; attempt++) {
    const controller = new AbortController();
    const timer = setTimeout(() => controller.abort(), 30000);
    try {
      const response = await fetch(target, {
        method: request.method,
        headers: { "content-type": request.headers.get("content-type") || "application/json" },
        body,
        signal: controller.signal,
      });
      clearTimeout(timer);
      return new Response(response.body, { status: response.status, headers: response.headers });
    } catch (error) {
      clearTimeout(timer);
      lastError = error;
      await new Promise((resolve) => setTimeout(resolve, 1000 * attempt));
    }
  }
  return Response.json({ error: "Proxy request failed", details: String(lastError) }, { status: 500 });
}

export const GET = proxy;
export const POST = proxy;
export const PUT = proxy;
export const DELETE = proxy;
export const PATCH = proxy;
export const dynamic = "force-dynamic";
