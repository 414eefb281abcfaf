//! `/v1/catalog/services`: every service name with its tags, to find services by tag.

use std::collections::BTreeMap;

use crate::client::{Client, QueryOptions, QueryResponse};
use crate::Error;

impl Client {
    /// Every registered service name with the union of its instances' tags. Blocks when
    /// `options.index` is set.
    pub async fn catalog_services(
        &self,
        options: &QueryOptions,
    ) -> Result<QueryResponse<BTreeMap<String, Vec<String>>>, Error> {
        let response: QueryResponse<BTreeMap<String, Option<Vec<String>>>> =
            self.get_json("/v1/catalog/services", options).await?;
        Ok(response.map(|services| {
            services
                .into_iter()
                .map(|(name, tags)| (name, tags.unwrap_or_default()))
                .collect()
        }))
    }

    /// Names of the services carrying `tag`.
    pub async fn services_with_tag(&self, tag: &str) -> Result<Vec<String>, Error> {
        let services = self.catalog_services(&QueryOptions::default()).await?.value;
        Ok(services
            .into_iter()
            .filter(|(_, tags)| tags.iter().any(|t| t == tag))
            .map(|(name, _)| name)
            .collect())
    }
}
