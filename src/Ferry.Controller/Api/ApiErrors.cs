using Microsoft.AspNetCore.Http;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Logging;

namespace Ferry.Controller.Api;

/// <summary>A request the API refuses: becomes a problem+json answer with this status, title and detail.</summary>
public sealed class ApiException(int status, string title, string detail) : Exception(detail)
{
    public int Status { get; } = status;
    public string Title { get; } = title;

    public static ApiException BadRequest(string detail) => new(StatusCodes.Status400BadRequest, "Invalid request", detail);
    public static ApiException NotFound(string what, string name) => new(StatusCodes.Status404NotFound, "Not found", $"{what} '{name}' does not exist");
    public static ApiException Conflict(string detail) => new(StatusCodes.Status409Conflict, "Conflict", detail);
}

/// <summary>Turns refused requests, unreadable bodies and unexpected failures into problem+json, so no client ever sees a bare 500 page.</summary>
public sealed class ProblemMiddleware(RequestDelegate next)
{
    public async Task InvokeAsync(HttpContext context)
    {
        try
        {
            await next(context);
        }
        catch (ApiException e) when (!context.Response.HasStarted)
        {
            await Results.Problem(statusCode: e.Status, title: e.Title, detail: e.Message).ExecuteAsync(context);
        }
        catch (BadHttpRequestException e) when (!context.Response.HasStarted)
        {
            // Malformed JSON, wrong content type, missing body: the client's fault, said plainly.
            var detail = e.InnerException is System.Text.Json.JsonException json ? $"request body is not valid JSON for this endpoint: {json.Message}" : e.Message;
            await Results.Problem(statusCode: e.StatusCode, title: "Invalid request", detail: detail).ExecuteAsync(context);
        }
        catch (Exception e) when (e is System.Data.Common.DbException or TimeoutException && !context.Response.HasStarted && !context.RequestAborted.IsCancellationRequested)
        {
            // The database went away under the request (a failover, a connection ended): the caller learns that and can retry,
            // rather than getting a bare 500 with nothing to act on. A write may or may not have been applied.
            var logger = context.RequestServices.GetRequiredService<ILoggerFactory>().CreateLogger("Ferry.Controller.Api");
            Log.DatabaseRequestFailed(logger, context.Request.Method, context.Request.Path, e.Message);
            await Results.Problem(statusCode: StatusCodes.Status503ServiceUnavailable, title: "Database unavailable",
                detail: $"the controller's database did not complete this request ({e.Message}); check whether the change was applied, then retry").ExecuteAsync(context);
        }
    }
}
