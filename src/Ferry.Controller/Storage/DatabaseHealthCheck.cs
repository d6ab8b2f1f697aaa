using Dapper;
using Microsoft.Extensions.Diagnostics.HealthChecks;

namespace Ferry.Controller.Storage;

/// <summary>The controller's readiness: its database answers a trivial query within two seconds.</summary>
public sealed class DatabaseHealthCheck(Database database) : IHealthCheck
{
    private static readonly TimeSpan Limit = TimeSpan.FromSeconds(2);

    public async Task<HealthCheckResult> CheckHealthAsync(HealthCheckContext context, CancellationToken cancellationToken = default)
    {
        using var timeout = CancellationTokenSource.CreateLinkedTokenSource(cancellationToken);
        timeout.CancelAfter(Limit);
        try
        {
            await using var connection = await database.OpenAsync(timeout.Token);
            await connection.ExecuteScalarAsync<int>(new CommandDefinition("SELECT 1", cancellationToken: timeout.Token));
            return HealthCheckResult.Healthy();
        }
        catch (OperationCanceledException) when (timeout.IsCancellationRequested && !cancellationToken.IsCancellationRequested)
        {
            return HealthCheckResult.Unhealthy($"database ({database.Kind.ToString().ToLowerInvariant()}) did not answer within {Limit.TotalSeconds:0} s");
        }
        catch (Exception e) when (e is System.Data.Common.DbException or System.Net.Sockets.SocketException or TimeoutException or InvalidOperationException)
        {
            return HealthCheckResult.Unhealthy($"database ({database.Kind.ToString().ToLowerInvariant()}) unreachable: {e.Message}");
        }
    }
}
