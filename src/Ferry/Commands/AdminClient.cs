using System.Net.Http.Json;
using System.Text.Json;
using Ferry.Core.Api;
using Ferry.Core.Security;

namespace Ferry.Cli.Commands;

/// <summary>The admin API as the CLI calls it: authenticated, the controller's certificate checked, problems turned into one-line errors.</summary>
internal sealed class AdminClient(Uri controller, string apiKey, ControllerTrust trust) : IDisposable
{
    private readonly HttpClient _http = CreateHttp(controller, apiKey, trust);

    private static HttpClient CreateHttp(Uri controller, string apiKey, ControllerTrust trust)
    {
        var http = new HttpClient(trust.CreateHandler()) { BaseAddress = controller, Timeout = TimeSpan.FromSeconds(30) };
        http.DefaultRequestHeaders.Authorization = new System.Net.Http.Headers.AuthenticationHeaderValue("Bearer", apiKey);
        return http;
    }

    public Task<T> GetAsync<T>(string path, CancellationToken ct) => SendAsync<T>(HttpMethod.Get, path, null, ct);

    public Task<T> PostAsync<T>(string path, object body, CancellationToken ct) => SendAsync<T>(HttpMethod.Post, path, body, ct);
    public Task<T> PatchAsync<T>(string path, object body, CancellationToken ct) => SendAsync<T>(HttpMethod.Patch, path, body, ct);

    public Task DeleteAsync(string path, CancellationToken ct) => SendAsync<JsonElement?>(HttpMethod.Delete, path, null, ct);

    public async Task<T> SendAsync<T>(HttpMethod method, string path, object? body, CancellationToken ct)
    {
        using var request = new HttpRequestMessage(method, path);
        if (body is not null)
        {
            request.Content = JsonContent.Create(body, body.GetType(), options: Output.Json);
        }
        HttpResponseMessage response;
        try
        {
            response = await _http.SendAsync(request, ct);
        }
        catch (HttpRequestException e)
        {
            var why = e.InnerException is System.Security.Authentication.AuthenticationException
                ? $"the controller's TLS certificate is not trusted ({trust.Description}); check --controller-fingerprint"
                : e.Message;
            throw new CliException($"cannot reach the controller at {controller}: {why}");
        }
        catch (TaskCanceledException) when (!ct.IsCancellationRequested)
        {
            throw new CliException($"the controller at {controller} did not answer within 30 s");
        }
        using (response)
        {
            if (!response.IsSuccessStatusCode)
            {
                var problem = await ApiProblem.ReadAsync(response, ct);
                throw new CliException(problem.Detail);
            }
            if (response.StatusCode == System.Net.HttpStatusCode.NoContent || typeof(T) == typeof(JsonElement?))
            {
                return default!;
            }
            return await response.Content.ReadFromJsonAsync<T>(Output.Json, ct) ?? throw new CliException("the controller answered with an empty body");
        }
    }

    public void Dispose() => _http.Dispose();
}
