using System.Net.Http.Json;
using System.Text.Json;

namespace Ferry.Core.Api;

/// <summary>An RFC 9457 problem+json body as the controller sends it, read back by the CLI and daemons.</summary>
public sealed record ApiProblem(string Title, string Detail, int Status)
{
    public static async Task<ApiProblem> ReadAsync(HttpResponseMessage response, CancellationToken ct)
    {
        var status = (int)response.StatusCode;
        try
        {
            var body = await response.Content.ReadFromJsonAsync<JsonElement>(ct);
            var title = body.TryGetProperty("title", out var t) ? t.GetString() ?? "" : "";
            var detail = body.TryGetProperty("detail", out var d) ? d.GetString() ?? title : title;
            return new ApiProblem(title, detail.Length > 0 ? detail : $"HTTP {status} {response.ReasonPhrase}", status);
        }
        catch (Exception e) when (e is JsonException or NotSupportedException or InvalidOperationException)
        {
            return new ApiProblem(response.ReasonPhrase ?? "", $"HTTP {status} {response.ReasonPhrase}", status);
        }
    }
}
